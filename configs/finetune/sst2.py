"""SST-2 (GLUE): one sentence, positive or negative; accuracy. BERT-base, paper settings.

GLUE's SST-2/train.tsv and dev.tsv (header 'sentence<TAB>label'):

  python -m train.main --config=configs/finetune/sst2.py --workdir=/tmp/sst2 \\
      --config.data.train_path=glue_data/SST-2/train.tsv \\
      --config.data.eval_path=glue_data/SST-2/dev.tsv

or from TFDS: --config.data.source=tfds --config.data.tfds_name=glue/sst2.
The other GLUE tasks: configs/finetune/glue.py:<task>.
"""

from configs.finetune import glue


def get_config(size: str = "base"):
  return glue.get_config(f"sst2,{size}")
