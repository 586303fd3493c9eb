"""int8 post-training quantization of a fine-tuned all-MiniLM-L6-v2, SST-2 or CoNLL-2003.

The model is compress.source's with every encoder matmul's kernel in int8, one float32
scale per output channel (model/quantize.py, through qwix), and each matmul's input
quantized per token at run time ('int8'; 'int8_weights' keeps activations float). Evaluated
as it is (epochs 0); the workdir's checkpoint holds the int8 kernels.

  python -m train.main --config=configs/compress/quantize.py:sst2 --workdir=/tmp/int8 \\
      --config.data.train_path=SST-2/train.tsv --config.data.eval_path=SST-2/dev.tsv \\
      --config.compress.source=/tmp/teacher

The teacher comes from configs/finetune/sst2.py:minilm (see configs/compress/prune.py).
"""

from configs.compress import prune


def get_config(task: str = "sst2"):
  c = prune.get_config(task)
  c.compress.update(prune_heads=0.0, prune_ffn=0.0)
  c.model.quantization = "int8"
  return c
