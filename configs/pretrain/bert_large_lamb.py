"""BERT-large with LAMB at 64k/32k batch (You et al. 2020, "Large Batch Optimization
for Deep Learning: Training BERT in 76 minutes", Table/section 4; the step counts and
learning rates as in NVIDIA's public LAMB recipe for it).

| phase | steps | seq | batch  | lr      | warmup            | decay        |
|-------|-------|-----|--------|---------|-------------------|--------------|
| 1     | 7,038 | 128 | 65,536 | 6e-3    | 2,000 (28.43 %)   | polynomial 1 |
| 2     | 1,563 | 512 | 32,768 | 4e-3    | 200 (12.8 %)      | polynomial 1 |

The batch is reached with gradient accumulation where the slice's memory runs
out: optimizer.grad_accum_steps * (per-step batch) = batch_size.

  python -m train.main --config=configs/pretrain/bert_large_lamb.py:phase1 --workdir=gs://B/lamb1
"""

from configs.pretrain import bert_large


def get_config(phase: str = "phase1"):
  c = bert_large.get_config(phase)
  c.optimizer.update(
    name="lamb",
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.01,
    decay="polynomial",
    power=1.0,
    clip_norm=1.0,
  )
  if phase == "phase1":
    c.batch_size = 65_536
    c.optimizer.update(lr=6e-3, warmup_steps=2_000, total_steps=7_038, grad_accum_steps=64)
  else:
    c.batch_size = 32_768
    c.optimizer.update(lr=4e-3, warmup_steps=200, total_steps=1_563, grad_accum_steps=128)
  return c
