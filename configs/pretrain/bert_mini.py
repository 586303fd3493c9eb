"""bert-mini (4 layers, 256 wide; Turc et al. 2019) on your own text, CPU-friendly.

  python -m train.main --config=configs/pretrain/bert_mini.py --workdir=/tmp/mini \
      --config.data.paths='corpus/*.txt' --config.data.vocab=/path/to/vocab.txt
"""

from configs.pretrain import common


def get_config():
  c = common.get_config("mini")
  c.data.update(dupe_factor=2, heldout_documents=0.02)
  c.batch_size = 32
  c.optimizer.update(lr=1e-3, warmup_steps=1000, total_steps=20_000)
  c.checkpoint.update(every_steps=1000)
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  return c
