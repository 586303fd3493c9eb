"""Continued pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"): more MLM on
in-domain text, from a pretrained checkpoint instead of from scratch.

The default is task-adaptive pretraining (TAPT) of all-MiniLM-L6-v2 on SST-2's own
training sentences, labels unread: the paper's TAPT uses a task's training text
alone, MLM only, and trains it for many epochs. Its checkpoint has no MLM head, so
the MLM transform and the decoder bias start new; the decoder is tied to the word
embeddings, which are pretrained. Rows are whole sentences filled to 128 tokens
(data.next_sentence=False): SST-2 sentences average about 12 tokens, so about ten
share a row. The vocab, sizes and positions come from init.hf_dir.

  python -m train.main --config=configs/pretrain/continued.py --workdir=/tmp/tapt \\
      --config.init.hf_dir=MINILM_DIR --config.data.paths=SST-2/train.tsv

The result fine-tunes (configs/finetune/*: --config.init.checkpoint=/tmp/tapt) and
fills cloze prompts (configs/finetune/sst2_prompt.py) like any pretraining workdir.
On a TPU slice the same file runs with a larger batch_size and total_steps, and
data.paths naming domain text (DAPT: data.text_columns='' reads plain text files, and
data.prepare_in_workdir=True prepares a large corpus once into WORKDIR/data).
"""

from configs.finetune.common import HF_CHECKPOINTS
from configs.pretrain import common


def get_config(size: str = "minilm"):
  c = common.get_config(size)
  c.init.hf_dir = HF_CHECKPOINTS[size]
  c.data.update(
    source="text",
    text_columns="sentence",  # SST-2's train.tsv; a CLUE JSON-lines file names its key
    prepare_in_workdir=False,  # a task's sentences: read in memory (tables are read there)
    vocab="",  # the checkpoint's own
    next_sentence=False,
    max_seq_length=128,
    max_predictions=20,
    mask_prob=0.15,
    dupe_factor=1,  # masks are drawn anew at every step; rows stay
    heldout_documents=0.01,
  )
  c.batch_size = 32
  c.optimizer.update(lr=1e-4, warmup_steps=60, total_steps=1000, weight_decay=0.01)
  c.checkpoint.update(every_steps=250)
  c.log_every_steps = 25
  c.eval_every_steps = 250
  c.eval_batches = 8
  return c
