"""A 3-layer student distilled from a fine-tuned 6-layer teacher (Hinton et al. 2015;
DistilBERT's start from every other teacher layer, Sanh et al. 2019), on SST-2 or CoNLL-2003.

The student is all-MiniLM-L6-v2's layers 0, 2 and 4 (embeddings included), a new head
and the task's own data; the teacher is a fine-tuned workdir of the same task (or an HF
directory with its head). Without distill.teacher the same config trains the student on
the labels alone, the row a distilled student is compared with.

  python -m train.main --config=configs/finetune/sst2.py:minilm --workdir=/tmp/teacher \\
      --config.data.train_path=SST-2/train.tsv --config.data.eval_path=SST-2/dev.tsv
  python -m train.main --config=configs/compress/distill.py:sst2 --workdir=/tmp/student \\
      --config.data.train_path=SST-2/train.tsv --config.data.eval_path=SST-2/dev.tsv \\
      --config.distill.teacher=/tmp/teacher

conll2003 reads CoNLL files the same way (data.train_path / eval_path), or TFDS's.
"""

from configs.compress.common import task_config


def get_config(task: str = "sst2"):
  c = task_config(task, "configs/compress/distill.py")
  c.init.layers = (0, 2, 4)  # every other layer of the 6
  c.model.num_hidden_layers = 3
  c.distill.update(temperature=2.0, soft_weight=0.5, hard_weight=0.5)
  return c
