"""BERT-base, the paper's recipe in two phases (Devlin et al. 2019, appendix A.2).

| phase | steps (of 1M) | seq | batch | max predictions | lr   | warmup |
|-------|---------------|-----|-------|-----------------|------|--------|
| 1     | 900k          | 128 | 256   | 20              | 1e-4 | 10k    |
| 2     | 100k          | 512 | 256   | 80              | 1e-4 | 10k    |

Adam (beta 0.9 / 0.999), weight decay 0.01, linear decay, dropout 0.1.
Phase 2 continues phase 1's weights: export phase 1 (`python -m train.hf
export`) and start phase 2 with `--config.init.hf_dir=THAT_DIR`.

  python -m train.main --config=configs/pretrain/bert_base.py:phase1 --workdir=gs://B/base1 \
      --config.data.source=tfds --config.data.tfds_name=wikipedia/20230601.en
"""

from configs.pretrain import common


def get_config(phase: str = "phase1"):
  c = common.get_config("base")
  c.model.dtype = "bfloat16"
  if phase == "phase1":
    c.data.update(max_seq_length=128, max_predictions=20)
    c.optimizer.update(lr=1e-4, warmup_steps=10_000, total_steps=900_000)
  elif phase == "phase2":
    c.data.update(max_seq_length=512, max_predictions=80)
    c.optimizer.update(lr=1e-4, warmup_steps=10_000, total_steps=100_000)
  else:
    raise ValueError(f"bert_base.py:{phase}: expected phase1 or phase2")
  c.batch_size = 256
  return c
