"""SST-2 as a cloze prompt (PET, Schick & Schuetze 2021): '<sentence> It was [MASK].'

The pretrained MLM head scores 'terrible' (label 0) against 'great' (label 1)
at the [MASK]; no parameter starts fresh.

  zero     no training: the loop evaluates the initial weights once (epochs=0)
  16shot   16 training sentences per class, picked by config.seed; batch 8 and
           lr 1e-5 as in PET / LM-BFF, 30 epochs of 4 steps (PET trains 250 steps,
           LM-BFF 1000); no warmup; no early stopping, so the dev numbers are not
           picked on dev (which a true few-shot setting could not do)

  python -m train.main --config=configs/finetune/sst2_prompt.py:zero,base \\
      --workdir=/tmp/sst2_zero --config.data.eval_path=glue_data/SST-2/dev.tsv
  python -m train.main --config=configs/finetune/sst2_prompt.py:16shot,base \\
      --workdir=/tmp/sst2_16shot --config.data.train_path=glue_data/SST-2/train.tsv \\
      --config.data.eval_path=glue_data/SST-2/dev.tsv

Contextual calibration (Zhao et al. 2021) divides each sentence's label-word
probabilities by those of content-free text in the same template, for a head that
prefers one word whatever it reads:
  --config.data.calibration_texts="('N/A','[MASK]')"

The weights need an MLM head: bert-base-uncased and the Turc et al. sizes have
one; sentence-transformers/all-MiniLM-L6-v2 (size minilm) does not: its new MLM head
reads the encoder through an identity transform, untrained (zero-shot 53.67 %).
"""

from configs.finetune import common

MODES = ("zero", "16shot")


def get_config(arg: str = "zero"):
  mode, _, size = arg.partition(",")
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r} in {arg!r}; known: {MODES} (e.g. 'zero,minilm')")
  c = common.get_config("cloze", size or "base")
  c.data.update(
    text_columns="sentence",
    label_column="label",
    has_header=True,
    labels=("0", "1"),
    metrics=("accuracy",),
    tfds_name="glue/sst2",
    tfds_text_keys="sentence",
    max_seq_length=128,
    template="{sentence} It was [MASK].",
    verbalizer=("terrible", "great"),
  )
  c.early_stopping.metric = ""
  c.optimizer.update(lr=1e-5, warmup_ratio=0.0)
  if mode == "zero":
    c.epochs = 0
    c.data.tfds_train_split = ""  # nothing to train on
  else:
    c.data.train_examples_per_class = 16
    c.batch_size = 8
    c.epochs = 30
    c.eval_every_steps = 40
  return c
