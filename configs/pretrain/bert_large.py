"""BERT-large (24 layers, 1024 wide), the paper's recipe; see bert_base.py for the table.

Layers are scanned (compile time flat in depth) and rematerialised (activation
memory of one layer) by default at this size.

  python -m train.main --config=configs/pretrain/bert_large.py:phase1 --workdir=gs://B/large1
"""

from configs.pretrain import bert_base, common


def get_config(phase: str = "phase1"):
  base = bert_base.get_config(phase)
  c = common.get_config("large")
  c.data = base.data
  c.optimizer = base.optimizer
  c.batch_size = base.batch_size
  c.model.update(dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
  c.mesh.shape = dict(data=-1, fsdp=4, tensor=1)
  return c
