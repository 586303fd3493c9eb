"""Every fine-tuning setting with its default; the task files change a few.

The BERT paper's fine-tuning recipe (Devlin et al. 2019, section 4 and
appendix A.3): Adam with weight decay 0.01, linear warmup over the first 10 %
of steps then linear decay, dropout 0.1, batch 32, 2-4 epochs, lr picked on
dev from {5e-5, 4e-5, 3e-5, 2e-5}, max_seq_length 128 (GLUE) / 384 (SQuAD).

  task='classification'        TSV or TFDS text, one sentence or a pair; regression;
                               relations with data.entity_markers
  task='token_classification'  CoNLL files (IOB1 or BIO) or TFDS conll2003
  task='question_answering'    SQuAD v1.1 JSON or TFDS squad
  task='multiple_choice'       SWAG-format CSV: a context and endings, one right
  task='cloze'                 classification data as a prompt the MLM head fills in
                               (data.template, data.verbalizer); epochs=0: zero-shot

The data fields every task shares are here; each task adds its own (its
module's DATA_DEFAULTS in train/tasks/<task>.py).

Weights come from init.hf_dir (an HF BERT directory or hub name) or
init.checkpoint (a pretraining workdir of this codebase); with neither, the
encoder starts from random values. data.vocab may stay empty when the init
source has a vocab.txt.
"""

import ml_collections

from configs import sizes, tracking
from train import tasks
from train.mesh import DEFAULT_RULES

# The published uncased checkpoints of each size (Turc et al. 2019 for the small ones).
HF_CHECKPOINTS = {
  "tiny": "google/bert_uncased_L-2_H-128_A-2",
  "mini": "google/bert_uncased_L-4_H-256_A-4",
  "small": "google/bert_uncased_L-4_H-512_A-8",
  "medium": "google/bert_uncased_L-8_H-512_A-8",
  "minilm": "sentence-transformers/all-MiniLM-L6-v2",
  "base": "bert-base-uncased",
  "large": "bert-large-uncased",
}


def _own_copy(value):
  """A FieldReference default (a field that takes values of several types, like True or
  'auto') copied, so that configs never share one."""
  if isinstance(value, ml_collections.FieldReference):
    return ml_collections.FieldReference(value.get(), field_type=value.get_type())
  return value


def get_config(task: str = "classification", size: str = "base") -> ml_collections.ConfigDict:
  spec = tasks.get(task)
  if task == "pretraining":
    raise ValueError("task='pretraining' has its own configs: configs/pretrain/")
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.model = sizes.bert(size)

  c.data = ml_collections.ConfigDict(
    dict(
      source="files",  # 'files' (paths below) | 'tfds' (tfds_name below)
      train_path="",  # TSV / CoNLL / SQuAD JSON, per task
      eval_path="",  # the dev set: evaluation, early stopping, best checkpoint
      test_path="",  # optional: evaluated once with the best parameters
      tfds_name="",  # e.g. 'glue/sst2', 'imdb_reviews', 'conll2003', 'squad/v1.1'
      tfds_train_split="train",
      tfds_eval_split="validation",
      tfds_test_split="",
      tfds_data_dir="",
      tfds_text_keys="",  # classification: '' = text_columns
      tfds_label_key="label",  # classification; its ClassLabel names become the labels
      labels=(),  # class / tag names in id order; () = those of train, sorted
      max_train_examples=0,  # >0: only the first N training rows (examples / sentences)
      vocab="",  # vocab.txt, a directory or HF name; '' = the init source's
      lowercase=True,
      max_unknown_fraction=0.05,  # more [UNK] in a training-text sample stops the run
      max_seq_length=128,  # longer text is truncated (counted in the log)
      # Each batch is padded to the shortest of these that holds its longest row (one
      # compile each): 'auto' = 16, 24, 32, 48, 64, 96, ... up to max_seq_length; 'none' = always
      # max_seq_length; or lengths like '32,64,128'.
      bucket_lengths="auto",
      # Several training examples a row of max_seq_length, attention kept inside each
      # (data/packing.py): one shape for the run, few padded positions. Classification, NER.
      packing=False,
    )
  )
  c.data.update({key: _own_copy(value) for key, value in spec.data_defaults.items()})

  # Parameter-efficient fine-tuning (model/peft.py); 'none' trains every parameter.
  c.peft = ml_collections.ConfigDict(
    dict(
      method="none",  # none | lora | adalora | adapter | prefix | prompt | bitfit
      rank=8,
      alpha=16.0,
      dropout=0.0,  # lora / adalora
      targets=("attention.query", "attention.value"),  # lora / adalora: modules in each layer
      adapter_size=64,  # adapter bottleneck
      num_virtual_tokens=16,
      prefix_projection=0,  # prefix / prompt
      # adalora: from `rank` to an average of target_rank non-zero singular values
      adalora=dict(
        target_rank=4,
        warmup_ratio=0.1,
        final_ratio=0.2,
        mask_interval=10,
        beta1=0.85,
        beta2=0.85,
        orth_reg_weight=0.1,
      ),
    )
  )

  # Elastic weight consolidation, set by continual learning (train/continual.py): the
  # encoder is pulled towards the anchor in `path` (an .npz of anchor and Fisher).
  c.ewc = ml_collections.ConfigDict(dict(weight=0.0, path=""))

  # Knowledge distillation (train/distill.py): a fine-tuned workdir or HF directory of this
  # task teaches the model through its logits; '' trains on the labels alone.
  c.distill = ml_collections.ConfigDict(
    dict(
      teacher="",
      temperature=2.0,  # T of the softened distributions (Hinton et al. 2015)
      soft_weight=0.5,  # weight of T^2 * KL(teacher_T || student_T)
      hard_weight=0.5,  # weight of the task loss on the labels
      # weight of the mean squared error between student and teacher layer outputs (TinyBERT),
      # each student layer against the teacher layer layer_map names; a narrower student's
      # through a learned projection to the teacher's width
      hidden_weight=0.0,
      # weight of KL(teacher || student) of every attention distribution (a head's query
      # row) of the mapped layers, TinyBERT / MiniLM; equal head counts
      attention_weight=0.0,
      layer_map=(),  # () = uniform: student layer i <- teacher layer (i + 1) * T / S - 1
    )
  )

  # Compression (train/compress.py): the model is this fine-tuned workdir's, with the least
  # important heads and FFN neurons of every layer removed (train/prune.py, Michel et al.
  # 2019) and model.quantization applied (model/quantize.py).
  c.compress = ml_collections.ConfigDict(
    dict(
      source="",  # a fine-tuned workdir of this task; '' = no compression
      prune_heads=0.0,  # fraction of each layer's attention heads to remove
      prune_ffn=0.0,  # fraction of each layer's FFN neurons to remove
      importance_batches=16,  # training batches the head / neuron importance is summed over
    )
  )

  c.batch_size = 32  # global, across all hosts and devices
  c.epochs = 3
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      lr=2e-5,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.01,
      total_steps=0,  # 0: epochs x steps per epoch
      warmup_steps=0,  # 0: warmup_ratio x total_steps
      warmup_ratio=0.1,
      decay="linear",
      end_lr=0.0,
      power=1.0,
      clip_norm=1.0,
      grad_accum_steps=1,
    )
  )
  c.early_stopping = ml_collections.ConfigDict(
    dict(
      metric="accuracy",  # an eval metric; the best checkpoint is kept by it
      mode="max",  # 'max' or 'min'
      patience=0,  # evaluations without improvement before stopping; 0: never
    )
  )

  c.mesh = ml_collections.ConfigDict(
    dict(
      shape=dict(data=-1, fsdp=1, tensor=1),
      rules=[list(rule) for rule in DEFAULT_RULES],
    )
  )
  c.init = ml_collections.ConfigDict(
    # layers: the source's layers the model keeps, in order ((0, 2, 4): every other one of
    # six, DistilBERT's student); () keeps them all
    dict(hf_dir=HF_CHECKPOINTS[size], checkpoint="", layers=())
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, max_to_keep=1, async_save=True))
  c.stop_at_step = 0  # >0: end this invocation there; resume later
  c.log_every_steps = 50
  c.wandb = tracking.wandb()  # Weights & Biases beside TensorBoard; off by default
  c.profile_steps = 0  # >0: trace that many steps into WORKDIR/profile (TensorBoard)
  c.eval_every_steps = 0  # 0: at the end of every epoch
  return c
