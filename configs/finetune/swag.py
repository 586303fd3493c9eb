"""SWAG (Zellers et al. 2018): pick the ending of a video caption; accuracy. BERT-base.

The BERT paper's SWAG recipe (Devlin et al. 2019, section 4.4): 3 epochs,
lr 2e-5, batch 16; each of the 4 (context, ending) pairs is scored through the
pooled [CLS] vector and the 4 scores are softmaxed. SWAG's regular train.csv
and val.csv (columns sent1, sent2, ending0..3, label; the repository
rowanz/swagaf, data/):

  python -m train.main --config=configs/finetune/swag.py --workdir=/tmp/swag \\
      --config.data.train_path=swagaf/data/train.csv \\
      --config.data.eval_path=swagaf/data/val.csv

max_seq_length 128 holds every SWAG pair; its test.csv has no labels
(train.predict --input_file takes 'context<TAB>ending<TAB>...' lines).
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("multiple_choice", size)
  c.batch_size = 16
  c.epochs = 3
  c.optimizer.lr = 2e-5
  c.early_stopping.metric = "accuracy"
  return c
