"""CoNLL-2003 English NER: entity-level F1 (seqeval), per-type report. BERT-base.

The original files (eng.train / eng.testa / eng.testb: word POS chunk NER,
IOB1 tags) or any BIO CoNLL file:

  python -m train.main --config=configs/finetune/conll2003.py --workdir=/tmp/conll \\
      --config.data.train_path=conll2003/eng.train \\
      --config.data.eval_path=conll2003/eng.testa \\
      --config.data.test_path=conll2003/eng.testb

or --config.data.source=tfds (TFDS conll2003). Settings: the BERT paper's
section 5.3 fine-tuning (cased model, first sub-token tagged), batch 32,
lr 5e-5, 3 epochs, seq 128 (longer sentences are truncated, counted in the log).
"""

from configs.finetune import common

LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def get_config(size: str = "base"):
  c = common.get_config("token_classification", size)
  c.init.hf_dir = "bert-base-cased" if size == "base" else c.init.hf_dir
  c.data.update(
    lowercase=size != "base",
    labels=LABELS,
    tfds_name="conll2003",
    tfds_eval_split="dev",
    tfds_test_split="test",
    max_seq_length=128,
  )
  c.batch_size = 32
  c.epochs = 3
  c.optimizer.lr = 5e-5
  c.early_stopping.update(metric="f1", mode="max")
  return c
