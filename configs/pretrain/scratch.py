"""From scratch on a small budget: the choices that matter when compute is short
(Cramming, Geiping & Goldstein 2022), scaled to one CPU hour and up to a TPU day.

  python -m train.main --config=configs/pretrain/scratch.py --workdir=/tmp/scratch \\
      --config.data.paths='corpus/*.txt'
  python -m train.main --config=configs/pretrain/scratch.py:mini,200M ...   # a TPU-day budget

The argument is `SIZE,TOKENS`: a BERT size (configs/sizes.py) and the budget in
batch tokens (`optimizer.total_tokens`; K / M / G suffixes). The schedule is set
by the budget, not by a step count, so the same recipe runs for an hour on a
laptop or a day on a slice with a larger batch_size. What differs from the BERT
paper's recipe, and why (measured in README, "Getting a better model from your
own text"):
- no NSP (data.next_sentence=False): rows of whole sentences run on across
  documents, so short texts fill rows instead of padding them, and every token
  of compute goes to MLM (Cramming, RoBERTa). ALBERT's sentence-order prediction
  (data.sentence_order) was measured on top and lost on SST-2 and CoNLL-2003;
- no dropout: a short run sees each row a few times, and dropout only slows it
  (Cramming);
- a WordPiece vocab learned from the corpus (8,192 pieces): a small model spends
  less on the embedding and output layers;
- the MLM decoder is its own matrix, not the word embeddings (model.tie_word_embeddings
  = False; decoupled embeddings, Chung et al. 2021): at bert-tiny and 24 M tokens the
  tied model sat on the frequent-word plateau (held-out MLM accuracy 0.173) while the
  untied one left it (0.237; one pretraining seed each), and only the untied one's frozen
  features beat a random network's on a linear probe. Fine-tuning never reads the decoder;
- a high peak learning rate with a short warmup and linear decay to zero at the
  budget's end (Cramming's one-cycle, Izsak et al. 2021's "24 hours" recipe).
"""

from configs.pretrain import common

SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9}


def parse_tokens(text: str) -> int:
  """'20M' -> 20_000_000."""
  text = text.strip().upper()
  scale = SUFFIXES.get(text[-1:], 1)
  digits = text[:-1] if text[-1:] in SUFFIXES else text
  try:
    return int(float(digits) * scale)
  except ValueError:
    raise ValueError(f"scratch.py: token budget {text!r} is not a number (e.g. 20M)") from None


def get_config(arg: str = "mini,20M"):
  size, _, tokens = arg.partition(",")
  c = common.get_config(size or "mini")
  c.model.update(
    vocab_size=8192,
    max_position_embeddings=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    tie_word_embeddings=False,
  )
  c.data.update(
    source="text",
    paths="",  # --config.data.paths=GLOB[,GLOB]: the BERT text format, or tables with text_columns
    vocab="train",
    train_vocab_size=8192,
    max_seq_length=128,
    next_sentence=False,
    mask_prob=0.15,
    max_predictions=20,
    dupe_factor=1,  # masks are drawn anew at every step; rows stay
    heldout_documents=0.02,
  )
  c.batch_size = 64
  c.optimizer.update(
    lr=1e-3,
    total_steps=0,
    total_tokens=parse_tokens(tokens or "20M"),
    warmup_steps=0,
    warmup_ratio=0.06,
    decay="linear",
    end_lr=0.0,
  )
  c.checkpoint.update(every_steps=250)
  c.log_every_steps = 25
  c.eval_every_steps = 250
  c.eval_batches = 16
  return c
