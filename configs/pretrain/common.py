"""Every pretraining setting with its default; the size/recipe files change a few.

The BERT paper's recipe (Devlin et al. 2019, appendix A.2): Adam, lr 1e-4,
beta1 0.9, beta2 0.999, weight decay 0.01, 10k warmup steps then linear decay,
dropout 0.1, batch 256, 1M steps, 90 % of them at length 128 and 10 % at 512;
create_pretraining_data.py: 15 % masking, max 20 predictions at 128 (80 at
512), short_seq_prob 0.1, dupe_factor 10.
"""

import ml_collections

from configs import sizes, tracking
from train.mesh import DEFAULT_RULES


def get_config(size: str = "base") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "pretraining"
  c.seed = 0
  c.model = sizes.bert(size)

  c.data = ml_collections.ConfigDict(
    dict(
      # 'text' (google-research/bert format files) | 'prepared' (shards that data.prepare
      # made from text files) | 'tfds' | 'embedded'
      source="text",
      paths="",  # comma-separated globs for source='text'; the directory for 'prepared'
      # source='text' reads tables (TSV/CSV with a header, or JSON lines) when set: these
      # columns of each row make one document (a task's own sentences, labels unread)
      text_columns="",
      tfds_name="",  # e.g. 'wikipedia/20230601.en', 'c4/en', 'lm1b'
      tfds_split="train",
      tfds_text_key="text",
      tfds_data_dir="",
      max_documents=0,  # 0: all
      heldout_documents=0.01,  # fraction (or count) of documents kept for eval
      # vocab.txt path, directory, HF name, or 'train'; '' takes init.hf_dir's / init.checkpoint's
      vocab="bert-base-uncased",
      train_vocab_size=30522,  # for vocab='train': WordPiece size learned from the corpus
      vocab_sample_documents=200_000,  # data.prepare learns vocab='train' from this many
      lowercase=True,
      max_unknown_fraction=0.05,  # more [UNK] in a training-text sample stops the run
      max_seq_length=128,
      short_seq_prob=0.1,
      dupe_factor=10,
      mask_prob=0.15,
      max_predictions=20,
      whole_word=False,
      # False: MLM alone on single-segment rows of whole sentences that run on across
      # documents (RoBERTa's FULL-SENTENCES); short texts (reviews, task sentences) then
      # fill rows instead of padding them, and the NSP head is not trained.
      next_sentence=True,
      # With next_sentence=True: the negative pair is A and its continuation B swapped
      # (ALBERT's sentence-order prediction) instead of B from another document.
      sentence_order=False,
      # With next_sentence=False: rows of several examples, each one document's whole
      # sentences in its own segment (attention stays inside it, positions restart), packed
      # first-fit; short texts fill rows without seeing each other (data/sentence_pairs.py).
      packing=False,
      # Words for whole_word masking of Chinese text (data/chinese.py): 'jieba', or '' for
      # WordPiece's "##" pieces (which never join Chinese characters).
      segmenter="",
      # source='text' / 'tfds': prepare the corpus once into WORKDIR/data (data.prepare's
      # pipeline, prepare_workers DirectRunner processes) and read it by index, so memory and
      # start-up stay flat and a resume reuses it; False reads it into memory at every start.
      prepare_in_workdir=True,
      prepare_workers=1,
      # data.prepare: documents are hashed to this many shards per split. Random-next B
      # segments come from the same shard, so keep a few thousand documents in each.
      num_shards=16,
    )
  )

  c.batch_size = 256  # global, across all hosts and devices
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      lr=1e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.01,
      warmup_steps=10_000,
      warmup_ratio=0.0,  # used when warmup_steps is 0: this fraction of the total
      total_steps=1_000_000,
      # A budget in tokens (batch_size x max_seq_length a step) instead of total_steps
      # (set total_steps=0): the same recipe on any batch size or machine.
      total_tokens=0,
      decay="linear",
      end_lr=0.0,
      power=1.0,
      clip_norm=1.0,
      grad_accum_steps=1,
    )
  )

  c.mesh = ml_collections.ConfigDict(
    dict(
      shape=dict(data=-1, fsdp=1, tensor=1),
      rules=[list(rule) for rule in DEFAULT_RULES],
    )
  )
  c.init = ml_collections.ConfigDict(dict(hf_dir=""))  # continue from HF weights
  # A linear probe at every evaluation (train/probe.py): a ridge classifier on the frozen
  # encoder's mean-pooled features of a small labelled set; eval rows get probe_accuracy.
  c.probe = ml_collections.ConfigDict(
    dict(
      train_path="",  # TSV / CSV / JSON lines with a header, e.g. SST-2's train.tsv; '': off
      eval_path="",
      text_columns="sentence",
      label_column="label",
      max_examples=2000,  # the first N rows of each file; 0: all
      l2=1.0,  # the ridge penalty on standardised features
    )
  )
  c.distributed = False  # True on TPU pods: jax.distributed.initialize() from the environment
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=5000, max_to_keep=3, async_save=True))
  c.stop_at_step = 0  # >0: end this invocation there (time-boxed jobs); resume later
  c.log_every_steps = 100
  c.wandb = tracking.wandb()  # Weights & Biases beside TensorBoard; off by default
  c.profile_steps = 0  # >0: trace that many steps into WORKDIR/profile (TensorBoard)
  c.eval_every_steps = 5000
  c.eval_batches = 20
  return c
