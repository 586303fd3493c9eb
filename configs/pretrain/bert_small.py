"""bert-small (4 layers, 512 wide; Turc et al. 2019), one GPU or a small TPU slice.

  python -m train.main --config=configs/pretrain/bert_small.py --workdir=gs://BUCKET/small \
      --config.data.source=tfds --config.data.tfds_name=wikipedia/20230601.en
"""

from configs.pretrain import common


def get_config():
  c = common.get_config("small")
  c.model.dtype = "bfloat16"
  c.optimizer.update(lr=5e-4, warmup_steps=10_000, total_steps=500_000)
  return c
