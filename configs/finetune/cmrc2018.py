"""CMRC 2018 (Chinese extractive QA, SQuAD's JSON layout), scored as its official script.

  python -m train.main --config=configs/finetune/cmrc2018.py --workdir=/tmp/cmrc \\
      --config.init.hf_dir=bert-base-chinese \\
      --config.data.train_path=cmrc2018_train.json \\
      --config.data.eval_path=cmrc2018_dev.json

Answers are character spans of the context, found through the tokenizer's
offsets (each Chinese character its own token), so a predicted answer is an
exact substring of the context. EM and F1 are cmrc2018_evaluate.py's (v5):
Chinese characters compared one by one, punctuation from its list dropped, F1
from the longest common substring of the segments.

Settings: CLUE's baseline, github.com/CLUEbenchmark/CLUE,
baselines/models_pytorch/mrc_pytorch/run_mrc_cmrc2018.sh and run_mrc.py's
defaults: 2 epochs, batch 32, lr 3e-5, warmup 10 %, max_seq_length 256,
20-best spans of at most 50 tokens (characters). `cmrc2018.py:<size>` picks a
BERT size (default base, bert-base-chinese's shape).
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("question_answering", size or "base")
  c.init.hf_dir = "bert-base-chinese"
  c.data.update(
    max_seq_length=256,
    doc_stride=128,
    max_query_length=64,
    n_best_size=20,
    max_answer_length=50,
    answer_scoring="cmrc2018",
  )
  c.batch_size = 32
  c.epochs = 2
  c.optimizer.update(lr=3e-5, warmup_ratio=0.1)
  c.early_stopping.update(metric="f1", mode="max")
  return c
