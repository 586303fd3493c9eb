"""Structured pruning (Michel et al. 2019) of a fine-tuned all-MiniLM-L6-v2, SST-2 or CoNLL-2003.

The model is compress.source's, with the least important half of every layer's attention
heads removed (importance: the gradient of a gate on each head, summed over 32 training
batches; train/prune.py), evaluated as it is: epochs 0, as the paper prunes without
retraining. --config.compress.prune_ffn removes FFN neurons the same way; --config.epochs=N
fine-tunes the pruned model afterwards. Weights and tokenizer are the source's, so no init
source is set.

  python -m train.main --config=configs/finetune/sst2.py:minilm --workdir=/tmp/teacher \\
      --config.data.train_path=SST-2/train.tsv --config.data.eval_path=SST-2/dev.tsv
  python -m train.main --config=configs/compress/prune.py:sst2 --workdir=/tmp/pruned \\
      --config.data.train_path=SST-2/train.tsv --config.data.eval_path=SST-2/dev.tsv \\
      --config.compress.source=/tmp/teacher

conll2003 reads CoNLL files the same way (data.train_path / eval_path), or TFDS's.
"""

from configs.compress.common import task_config


def get_config(task: str = "sst2"):
  c = task_config(task, "configs/compress/prune.py")
  c.init.hf_dir = ""  # the weights and the tokenizer are compress.source's
  c.compress.update(prune_heads=0.5, prune_ffn=0.0, importance_batches=32)
  c.epochs = 0
  return c
