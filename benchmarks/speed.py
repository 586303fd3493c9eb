"""Pretraining train-step speed: our jitted step against transformers' PyTorch BertForPreTraining.

One table, one row per framework per (size, sequence length): compile / warm-up
time, median step time, tokens/s, model TFLOP/s, MFU, peak memory and the
speed ratio against torch, on the same device in the same run.

Ours is the train step exactly as `train.loop.train_and_evaluate` builds it
(clip + AdamW + schedule, donated state, mesh rules active); torch is the stock
`BertForPreTraining` (MLM logits at every position, labels -100 where
unmasked) with AdamW and clip 1.0. Both see the same synthetic batch shapes.
Each measurement runs in its own process (this script with `--worker=...`),
alternating ours, torch, ours, torch, ... for `--repeats`, so the peak memory
is per process and load drift hits both frameworks alike; the table gives the
median over the repeats.

  python -m benchmarks.speed --sizes=mini --seq_lens=128 --batch_size=32 --steps=15 --warmup=2

On a GPU (bf16 by default there; torch under bf16 autocast with SDPA attention;
attention dropout off, else our model runs einsum attention whatever
--attention_impl says):

  python -m benchmarks.speed --sizes=base,large --seq_lens=128,512 --batch_size=32 \\
      --dtype=bfloat16 --attention_impl=cudnn --attention_dropout=0 --steps=50 --warmup=5
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.shared import synthetic_batch

FLAGS = flags.FLAGS
flags.DEFINE_list(
  "sizes",
  ["mini"],
  "BERT sizes from configs/sizes.py (tiny, mini, small, medium, minilm, base, large).",
)
flags.DEFINE_list("seq_lens", ["128"], "Sequence lengths, one configuration each.")
flags.DEFINE_integer("batch_size", 32, "Sequences per step, every row.")
flags.DEFINE_integer("steps", 20, "Timed steps per process.")
flags.DEFINE_integer(
  "warmup",
  3,
  "Untimed steps before them, the first one included (ours: "
  "the first run of the compiled step; torch: its first step).",
)
flags.DEFINE_enum(
  "dtype",
  "",
  ["", "float32", "bfloat16"],
  "Compute dtype of both frameworks "
  "(ours: model.dtype; torch: autocast); empty: bfloat16 on GPU, float32 on CPU.",
)
flags.DEFINE_enum(
  "attention_impl", "einsum", ["einsum", "xla", "cudnn"], "Our model.attention_impl."
)
flags.DEFINE_integer("predictions", 0, "Masked positions per row; 0: round(0.15 * seq_len).")
flags.DEFINE_float(
  "attention_dropout",
  -1.0,
  "attention_probs_dropout_prob of both models; < 0 "
  "keeps the size's 0.1. Ours runs einsum attention whenever it is > 0 in "
  "training, whatever --attention_impl says: 0 lets xla / cudnn run.",
)
flags.DEFINE_integer("repeats", 2, "Processes per framework and configuration (median taken).")
flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "auto: a GPU when nvidia-smi sees one.")
flags.DEFINE_float(
  "peak_tflops",
  0.0,
  "Peak dense TFLOP/s for MFU; 0: by GPU kind from GPU_PEAKS, on CPU a measured fp32 matmul.",
)
flags.DEFINE_integer("worker_timeout", 3600, "Seconds one worker process may take.")
flags.DEFINE_string("out", "/tmp/speed.md", "Markdown file the table goes to (+ .json beside).")
flags.DEFINE_enum(
  "worker",
  "",
  ["", "ours", "torch", "peak"],
  "Internal: run one measurement (first size and seq_len) and print a JSON line.",
)

RESULT_MARKER = "SPEED_RESULT "
GIB = 2**30

# Dense (no sparsity) peak FLOP/s by a substring of the device kind, first match wins:
# (bf16, fp32 as XLA runs it by default on these GPUs, i.e. TF32 tensor cores).
GPU_PEAKS = (
  ("H100 PCIe", 756e12, 378e12),
  ("H100 NVL", 835e12, 418e12),
  ("H200 NVL", 835e12, 418e12),
  ("H100", 989e12, 495e12),  # SXM ("NVIDIA H100 80GB HBM3"), GH200
  ("H200", 989e12, 495e12),
  ("A100", 312e12, 156e12),
  ("L40S", 362e12, 183e12),
  ("L4", 121e12, 60e12),
)
CPU_MATMUL = 2048  # n of the n x n @ n x n fp32 matmul that measures the CPU's peak
CPU_MATMUL_REPS = 5


# --------------------------------------------------------------------------
# Shared by both workers


def pretrain_config(size: str, seq_len: int, predictions: int, dtype: str):
  """configs/pretrain/common.py for `size`, at this batch shape and compute setting."""
  from configs.pretrain import common

  c = common.get_config(size)
  c.model.update(dtype=dtype, attention_impl=FLAGS.attention_impl)
  if FLAGS.attention_dropout >= 0:
    c.model.attention_probs_dropout_prob = FLAGS.attention_dropout
  c.batch_size = FLAGS.batch_size
  c.data.update(max_seq_length=seq_len, max_predictions=predictions)
  return c


def _timed_steps(step, warmup: int, steps: int) -> tuple[float, list[float], object]:
  """(seconds of the first call, seconds of each timed step, last result); `step` blocks."""
  start = time.perf_counter()
  first_result = step()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    step()
  times, result = [], first_result
  for _ in range(steps):
    start = time.perf_counter()
    result = step()
    times.append(time.perf_counter() - start)
  return first, times, (first_result, result)


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --------------------------------------------------------------------------
# Ours


def build_ours_step(config, mesh, rules):
  """(jitted train step, initial state, the step's other arguments before the batch).

  Built by `train.run.build_run`, as `train.loop.train_and_evaluate` builds it
  (no data read: the batches are synthetic). The step is called as
  `step(state, *others, batch) -> (state, metrics)`, its state donated.
  """
  from train.run import build_run

  run = build_run(config, devices=list(mesh.devices.flat), with_data=False)
  return run.train_step, run.state, (run.frozen,)


def run_ours(size: str, seq_len: int, predictions: int, dtype: str, gpu: bool) -> dict:
  import jax

  from train import mesh as mesh_lib

  jax.config.update("jax_enable_compilation_cache", False)  # time a real compile
  device = jax.devices()[0]
  if gpu and device.platform != "gpu":
    raise RuntimeError(f"JAX sees no GPU (devices: {jax.devices()}): install a CUDA jaxlib")
  config = pretrain_config(size, seq_len, predictions, dtype)
  mesh = mesh_lib.make_mesh(config.mesh.shape, [device])  # one device, as torch
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  train_step, state, others = build_ours_step(config, mesh, rules)
  params = sum(int(x.size) for x in jax.tree.leaves((state.params, others)))
  batch = mesh_lib.shard_batch(
    synthetic_batch(FLAGS.batch_size, seq_len, config.model.vocab_size, predictions), mesh, rules
  )

  with mesh_lib.activate(mesh, rules):
    start = time.perf_counter()
    lowered = train_step.lower(state, *others, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    holder = {"state": state}
    del state

    def step():
      holder["state"], metrics = compiled(holder["state"], *others, batch)
      jax.block_until_ready((holder["state"], metrics))
      return metrics["total_loss"]

    first, times, losses = _timed_steps(step, FLAGS.warmup, FLAGS.steps)

  if device.platform == "cpu":
    peak, memory_kind = _peak_rss_bytes(), "process peak RSS"
  else:
    peak, memory_kind = device.memory_stats()["peak_bytes_in_use"], "peak_bytes_in_use"
  return {
    "lower_s": lowered_at - start,
    "compile_s": compiled_at - lowered_at,
    "first_call_s": first,
    "warmup_s": compiled_at - start + first,
    "step_times": times,
    "step_time": float(np.median(times)),
    "peak_bytes": int(peak),
    "memory_kind": memory_kind,
    "losses": [float(x) for x in losses],
    "params": params,
    "attention": config.model.attention_impl,
    "device_kind": device.device_kind,
    "platform": device.platform,
    "jax": jax.__version__,
  }


# --------------------------------------------------------------------------
# Torch


def run_torch(size: str, seq_len: int, predictions: int, dtype: str, gpu: bool) -> dict:
  import torch
  import transformers
  from transformers import BertConfig as HFConfig
  from transformers import BertForPreTraining as HFBertForPreTraining

  from model.config import BertConfig

  if gpu and not torch.cuda.is_available():
    raise RuntimeError(f"torch {torch.__version__} sees no CUDA device: install a CUDA build")
  device = torch.device("cuda" if gpu else "cpu")
  config = pretrain_config(size, seq_len, predictions, dtype)
  model_config = BertConfig.from_dict(config.model)
  extra = {"attn_implementation": "sdpa"} if gpu else {}
  torch.manual_seed(0)
  model = HFBertForPreTraining(HFConfig(**model_config.to_hf_dict(), **extra)).to(device)
  model.train()
  opt = config.optimizer
  named = list(model.named_parameters())
  no_decay = [n.endswith("bias") or "LayerNorm" in n for n, _ in named]  # as our decay_mask
  optimizer = torch.optim.AdamW(
    [
      {
        "params": [p for (_, p), nd in zip(named, no_decay) if not nd],
        "weight_decay": opt.weight_decay,
      },
      {"params": [p for (_, p), nd in zip(named, no_decay) if nd], "weight_decay": 0.0},
    ],
    lr=opt.lr,
    betas=(opt.b1, opt.b2),
    eps=opt.eps,
  )
  batch = synthetic_batch(FLAGS.batch_size, seq_len, model_config.vocab_size, predictions)
  t = {k: torch.from_numpy(v).long().to(device) for k, v in batch.items() if k != "masked_weights"}
  labels = torch.full_like(t["input_ids"], -100).scatter_(1, t["masked_positions"], t["masked_ids"])
  inputs = {
    "input_ids": t["input_ids"],
    "token_type_ids": t["token_type_ids"],
    "attention_mask": t["attention_mask"],
    "labels": labels,
    "next_sentence_label": t["next_sentence_label"],
  }
  bf16 = dtype == "bfloat16"

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm)
    optimizer.step()
    if gpu:
      torch.cuda.synchronize()
    return loss.detach()

  if gpu:
    torch.cuda.reset_peak_memory_stats()
  first, times, losses = _timed_steps(step, FLAGS.warmup, FLAGS.steps)
  if gpu:
    peak, memory_kind = torch.cuda.max_memory_allocated(), "max_memory_allocated"
  else:
    peak, memory_kind = _peak_rss_bytes(), "process peak RSS"
  return {
    "warmup_s": first,
    "step_times": times,
    "step_time": float(np.median(times)),
    "peak_bytes": int(peak),
    "memory_kind": memory_kind,
    "losses": [float(x) for x in losses],
    "params": sum(p.numel() for p in model.parameters()),
    "attention": model.config._attn_implementation,
    "device_kind": torch.cuda.get_device_name() if gpu else "cpu",
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
  }


# --------------------------------------------------------------------------
# CPU peak


def run_peak() -> dict:
  """FLOP/s of the best of CPU_MATMUL_REPS fp32 n x n matmuls, per library, all cores."""
  n = CPU_MATMUL
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))

  def best(fn) -> float:
    fn()
    times = []
    for _ in range(CPU_MATMUL_REPS):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2.0 * n**3 / min(times)

  import jax
  import jax.numpy as jnp
  import torch

  x, y = jnp.asarray(a), jnp.asarray(b)
  matmul = jax.jit(jnp.matmul)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  return {
    "numpy": best(lambda: a @ b),
    "jax": best(lambda: matmul(x, y).block_until_ready()),
    "torch": best(lambda: ta @ tb),
  }


# --------------------------------------------------------------------------
# Parent: spawn, aggregate, render


def gpu_present() -> bool:
  if FLAGS.device != "auto":
    return FLAGS.device == "gpu"
  if shutil.which("nvidia-smi"):
    try:
      out = subprocess.run(
        ["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=60
      )
      return out.returncode == 0 and "GPU" in out.stdout
    except (OSError, subprocess.SubprocessError):
      pass
  return bool(glob.glob("/dev/nvidia[0-9]*"))


def worker_env(gpu: bool) -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  if not gpu:
    env["JAX_PLATFORMS"] = "cpu"  # libtpu may be installed: never probe for accelerators
  return env


def spawn(kind: str, size: str, seq_len: int, predictions: int, dtype: str, gpu: bool) -> dict:
  """Runs one worker process; its JSON result, or {'error': ...}."""
  args = [
    sys.executable,
    os.path.abspath(__file__),
    f"--worker={kind}",
    f"--sizes={size}",
    f"--seq_lens={seq_len}",
    f"--predictions={predictions}",
    f"--dtype={dtype}",
    f"--batch_size={FLAGS.batch_size}",
    f"--steps={FLAGS.steps}",
    f"--warmup={FLAGS.warmup}",
    f"--attention_impl={FLAGS.attention_impl}",
    f"--attention_dropout={FLAGS.attention_dropout}",
    f"--device={'gpu' if gpu else 'cpu'}",
  ]
  try:
    proc = subprocess.run(
      args,
      check=False,
      env=worker_env(gpu),
      capture_output=True,
      text=True,
      timeout=FLAGS.worker_timeout,
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {FLAGS.worker_timeout} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER) :])
  tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-15:]
  print(
    f"worker {kind} {size} seq {seq_len} failed (rc {proc.returncode}):\n  " + "\n  ".join(tail),
    file=sys.stderr,
    flush=True,
  )
  return {"error": (tail[-1] if tail else f"exit code {proc.returncode}")[:300]}


def model_flops(size: str, seq_len: int, predictions: int) -> float:
  from configs import sizes
  from model.config import BertConfig
  from train.profiling import train_flops_per_step

  config = BertConfig.from_dict(sizes.bert(size))
  return train_flops_per_step(config, FLAGS.batch_size, seq_len, predictions)


def gpu_peak(device_kind: str, dtype: str) -> float | None:
  for name, bf16, fp32 in GPU_PEAKS:
    if name in device_kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def _median(values):
  return float(statistics.median(values)) if values else None


def aggregate(results: list[dict]) -> dict:
  ok = [r for r in results if "error" not in r]
  if not ok:
    return {"error": results[-1]["error"]}
  keys = ("step_time", "warmup_s", "peak_bytes")
  row = {k: _median([r[k] for r in ok]) for k in keys}
  row.update(
    processes=len(ok),
    failed=len(results) - len(ok),
    step_time_range=(min(r["step_time"] for r in ok), max(r["step_time"] for r in ok)),
    losses=ok[0]["losses"],
    last=ok[-1],
  )
  if "lower_s" in ok[0]:
    row.update({k: _median([r[k] for r in ok]) for k in ("lower_s", "compile_s", "first_call_s")})
  return row


def _fmt(value, spec: str, fallback: str = "–") -> str:
  return fallback if value is None else format(value, spec)


def render(command: str, rows: list[dict], notes: list[str]) -> str:
  header = (
    "| framework | model | batch × seq | dtype | compile / warm-up (s) | step time (s) "
    "| tokens/s | model TFLOP/s | MFU (%) | peak memory (GiB) | speed vs torch |"
  )
  lines = [
    f"Command: `{command}`",
    "",
    header,
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    head = f"| {r['framework']} | {r['model']} | {r['shape']} | {r['dtype']} "
    if r.get("error"):
      lines.append(head + "| failed: see notes | | | | | | |")
      continue
    ratio = _fmt(r["vs_torch"], ".2f") + ("×" if r["vs_torch"] else "")
    lines.append(
      head + f"| {r['warmup_s']:.2f} | {r['step_time']:.4f} "
      f"| {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {_fmt(r['mfu'], '.1f')} "
      f"| {r['peak_gib']:.2f} | {ratio} |"
    )
  lines += [""] + [f"- {note}" for note in notes]
  return "\n".join(lines) + "\n"


def build_notes(gpu: bool, dtype: str, peak: dict, machine: dict, configs: list[dict]) -> list[str]:
  b, w, s, reps = FLAGS.batch_size, FLAGS.warmup, FLAGS.steps, FLAGS.repeats
  attn_dropout = (
    "0.1 (the sizes' default)" if FLAGS.attention_dropout < 0 else f"{FLAGS.attention_dropout:g}"
  )
  waits = (
    "`jax.block_until_ready`, `torch.cuda.synchronize()`"
    if gpu
    else "`jax.block_until_ready`; torch on CPU is synchronous"
  )
  notes = [
    (
      "Speed vs torch = torch's step time / this row's (> 1: faster than torch). Step time: "
      f"median of {s} timed steps after {w} untimed one(s), each step waited for ({waits}), "
      f"then the median over {reps} process(es) per row, run alternately ours, torch, ours, "
      "torch, ... (one process per measurement)."
    ),
    (
      "Ours: the train step as `train.loop.train_and_evaluate` builds it (`make_optimizer` → "
      "`create_train_state` → `jax.jit(make_train_step(...), donate_argnums=0)`) from "
      "configs/pretrain/common.py: clip 1.0, AdamW (wd 0.01 off biases / LayerNorm), linear "
      "warmup schedule, on a one-device mesh under the default rules; MLM logits at the masked "
      "positions only. Compile / warm-up = `.lower()` + `.compile()` + the first call of the "
      "compiled step (persistent compilation cache off)."
    ),
    "Torch: transformers' stock `BertForPreTraining` built from the same config "
    "(`BertConfig.to_hf_dict()`), `labels` = the masked ids at the masked positions and -100 "
    "elsewhere, plus `next_sentence_label`; AdamW with the same lr / betas / eps / decay mask "
    "(default implementation), clip 1.0; "
    + ("bf16 `torch.autocast`, " if dtype == "bfloat16" else "fp32, ")
    + "eager. Compile / warm-up = its first step.",
    (
      f"Both: dropout 0.1 (hidden), attention-probability dropout {attn_dropout}, batch {b}, "
      "one synthetic batch reused every step (full-length rows, two segments, no padding), "
      "parameters float32."
    ),
  ]
  if FLAGS.attention_impl != "einsum" and FLAGS.attention_dropout != 0:
    notes.append(
      f"Attention: ours was asked for `{FLAGS.attention_impl}`, but model/bert.py "
      "falls back to einsum attention whenever attention-probability dropout is on in "
      "training (the fused kernels have none), so our rows ran einsum (torch's SDPA "
      "kernels do take dropout); "
      "`--attention_dropout=0` (both frameworks) lets the fused kernel run."
    )
  for c in configs:
    notes.append(
      f"{c['model']} at {c['shape']}: {c['predictions']} masked positions per row; "
      f"{c['flops'] / 1e12:.3g} model TFLOP per step (`train.profiling.train_flops_per_step`: "
      "3 × forward, attention included, MLM head at the masked positions), used for both rows. "
      f"Stock torch projects all {c['seq_len']} positions onto the vocabulary, "
      f"{c['torch_flops'] / 1e12:.3g} TFLOP ({c['torch_flops'] / c['flops']:.2f}×), so its "
      "TFLOP/s and MFU count useful work, not what its hardware did."
      + (
        f" Losses (first → last step, a sanity check): ours {c['ours_losses']}, torch "
        f"{c['torch_losses']} (ours is inside its 10k-step warmup, lr ≈ 0; torch's lr is "
        "constant; neither changes a step's cost)."
        if c.get("ours_losses") and c.get("torch_losses")
        else ""
      )
    )
    for name in ("ours", "torch"):
      if c.get(f"{name}_error"):
        notes.append(f"{c['model']} at {c['shape']}, {name} failed: {c[f'{name}_error']}")
    if c.get("ours_split"):
      lower, compile_s, first = c["ours_split"]
      notes.append(
        f"{c['model']} at {c['shape']}, ours' compile / warm-up = lower {lower:.2f} s "
        f"+ compile {compile_s:.2f} s + first call {first:.2f} s; step-time range "
        f"over processes: ours {c['ours_range']}, torch {c['torch_range']}."
      )
  if peak.get("source") == "measured":
    per_lib = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak["measured"].items())
    notes.append(
      f"MFU: peak = {peak['value'] / 1e9:.0f} GFLOP/s, the best fp32 "
      f"{CPU_MATMUL}×{CPU_MATMUL} @ {CPU_MATMUL}×{CPU_MATMUL} matmul of "
      f"{CPU_MATMUL_REPS} (GFLOP/s: {per_lib}; all cores, in a process of its own), "
      "i.e. what this CPU achieves on a large matmul, not a datasheet number"
      + ("; bf16 rows are held to the same fp32 peak." if dtype == "bfloat16" else ".")
    )
  elif peak.get("source") == "table":
    kind = "bf16" if dtype == "bfloat16" else "fp32 (TF32 tensor cores, XLA's default for f32 dots)"
    notes.append(
      f"MFU: peak = {peak['value'] / 1e12:.0f} TFLOP/s, the datasheet dense {kind} "
      f"peak of {machine['device_kind']} (GPU_PEAKS in this script)."
      + (
        ""
        if dtype == "bfloat16"
        else " Torch runs f32 matmuls in full fp32 "
        "(allow_tf32 off by default), so fp32 rows are not like for like."
      )
    )
  elif peak.get("source") == "flag":
    notes.append(f"MFU: peak = {peak['value'] / 1e12:g} TFLOP/s from --peak_tflops.")
  else:
    notes.append(
      f"MFU: no peak known for {machine['device_kind']!r}: add it to GPU_PEAKS or "
      "pass --peak_tflops."
    )
  if gpu:
    notes.append(
      "Peak memory: device allocator peaks, `memory_stats()['peak_bytes_in_use']` "
      "(JAX, its preallocated pool not counted) and "
      "`torch.cuda.max_memory_allocated()`."
    )
  else:
    notes.append(
      "Peak memory: each worker process's peak RSS "
      "(`getrusage(RUSAGE_SELF).ru_maxrss`), "
      "nothing subtracted: it includes the interpreter and the imported libraries "
      "(jax / flax for ours, torch / transformers for torch), not only the model, "
      "optimizer state and activations."
    )
  notes.append(
    f"Machine: {machine['cpus']} CPU cores, device {machine['device_kind']}; jax "
    f"{machine.get('jax', '?')}, torch {machine.get('torch', '?')} "
    f"({machine.get('threads', '?')} threads, attention "
    f"'{machine.get('torch_attention', '?')}'), "
    f"transformers {machine.get('transformers', '?')}; 1-min load average "
    f"{machine['load'][0]:.1f} at start, {machine['load'][1]:.1f} at end."
  )
  if max(machine["load"]) > 0.75 * machine["cpus"]:
    notes.append(
      f"Warning: the 1-min load average reached {max(machine['load']):.1f} on "
      f"{machine['cpus']} cores, so other work shared the machine and step times are "
      "inflated; torch's OpenMP threads suffer more from oversubscription than JAX's, "
      "so the ratio is skewed too. Rerun on a quiet machine."
    )
  return notes


def _size_label(size: str) -> str:
  from configs import sizes

  layers, hidden, heads = sizes.SIZES[size][:3]
  return f"bert-{size} ({layers}L/{hidden}H/{heads}A)"


def run_parent() -> None:
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  print(f"Command: {command}", flush=True)
  gpu = gpu_present()
  dtype = FLAGS.dtype or ("bfloat16" if gpu else "float32")
  load_start = os.getloadavg()[0]
  seq_lens = [int(s) for s in FLAGS.seq_lens]
  for seq_len in seq_lens:
    if not 4 <= seq_len <= 512:
      raise app.UsageError(f"--seq_lens: {seq_len} is outside [4, 512]")
  if FLAGS.steps < 1 or FLAGS.warmup < 1 or FLAGS.repeats < 1:
    raise app.UsageError("--steps, --warmup and --repeats must be >= 1")

  peak = {}
  if FLAGS.peak_tflops > 0:
    peak = {"source": "flag", "value": FLAGS.peak_tflops * 1e12}
  elif not gpu:
    measured = spawn("peak", FLAGS.sizes[0], seq_lens[0], 1, dtype, gpu)
    if "error" in measured:
      raise SystemExit(f"measuring the CPU peak failed: {measured['error']}")
    peak = {"source": "measured", "value": max(measured.values()), "measured": measured}
    print(f"CPU fp32 matmul peak: {peak['value'] / 1e9:.0f} GFLOP/s", flush=True)

  rows, configs, raw, machine = [], [], [], {"cpus": os.cpu_count(), "device_kind": "cpu"}
  for size in FLAGS.sizes:
    for seq_len in seq_lens:
      predictions = FLAGS.predictions or round(0.15 * seq_len)
      if not 1 <= predictions <= seq_len - 2:
        raise app.UsageError(f"--predictions={predictions}: must lie in [1, {seq_len - 2}]")
      results = {"ours": [], "torch": []}
      for repeat in range(FLAGS.repeats):
        for kind in ("ours", "torch"):
          r = spawn(kind, size, seq_len, predictions, dtype, gpu)
          results[kind].append(r)
          raw.append(dict(r, framework=kind, size=size, seq_len=seq_len, repeat=repeat))
          status = r.get("error") or (
            f"step {r['step_time']:.4f} s, warm-up {r['warmup_s']:.2f} "
            f"s, peak {r['peak_bytes'] / GIB:.2f} GiB"
          )
          print(
            f"[{size} {FLAGS.batch_size}x{seq_len} {repeat + 1}/{FLAGS.repeats}] {kind}: {status}",
            flush=True,
          )
      agg = {kind: aggregate(rs) for kind, rs in results.items()}
      flops = model_flops(size, seq_len, predictions)
      config = {
        "model": _size_label(size),
        "shape": f"{FLAGS.batch_size} × {seq_len}",
        "seq_len": seq_len,
        "predictions": predictions,
        "flops": flops,
        "torch_flops": model_flops(size, seq_len, seq_len),
      }
      for kind, a in agg.items():
        if "error" in a:
          config[f"{kind}_error"] = a["error"]
          continue
        config[f"{kind}_losses"] = " → ".join(f"{x:.3f}" for x in a["losses"])
        config[f"{kind}_range"] = "–".join(f"{x:.4f}" for x in a["step_time_range"])
        last = a["last"]
        if kind == "ours":
          config["ours_split"] = (a["lower_s"], a["compile_s"], a["first_call_s"])
          machine.update(device_kind=last["device_kind"], jax=last["jax"])
        else:
          machine.update(
            torch=last["torch"],
            threads=last["threads"],
            transformers=last["transformers"],
            torch_attention=last["attention"],
          )
          if machine["device_kind"] == "cpu":
            machine["device_kind"] = last["device_kind"]
      configs.append(config)
      if gpu and not peak:
        value = gpu_peak(machine["device_kind"], dtype)
        peak = {"source": "table", "value": value} if value else {"source": "unknown"}
      torch_step = agg["torch"].get("step_time")
      for kind in ("ours", "torch"):
        a = agg[kind]
        attention = (
          FLAGS.attention_impl
          if kind == "ours"
          else a.get("last", {}).get("attention", "sdpa" if gpu else "?")
        )
        if (
          kind == "ours"
          and a.get("last")
          and a["last"]["attention"] != "einsum"
          and FLAGS.attention_dropout != 0
        ):
          attention += "→einsum"
        row = {
          "framework": f"{kind} ({attention})",
          "model": config["model"],
          "shape": config["shape"],
          "dtype": dtype,
          "size": size,
          "seq_len": seq_len,
        }
        if "error" in a:
          rows.append(dict(row, error=a["error"]))
          continue
        step_time = a["step_time"]
        row.update(
          warmup_s=a["warmup_s"],
          step_time=step_time,
          tokens_per_s=FLAGS.batch_size * seq_len / step_time,
          tflops=flops / step_time / 1e12,
          peak_gib=a["peak_bytes"] / GIB,
          mfu=100 * flops / step_time / peak["value"] if peak.get("value") else None,
          vs_torch=torch_step / step_time if torch_step else None,
          processes=a["processes"],
        )
        rows.append(row)

  machine["load"] = (load_start, os.getloadavg()[0])
  if not peak:
    peak = {"source": "unknown"}
  table = render(command, rows, build_notes(gpu, dtype, peak, machine, configs))
  print("\n" + table, flush=True)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w", encoding="utf-8") as f:
    json.dump(
      {
        "command": command,
        "gpu": gpu,
        "dtype": dtype,
        "peak": peak,
        "machine": machine,
        "rows": rows,
        "configs": configs,
        "processes": raw,
      },
      f,
      indent=2,
      default=str,
    )
  print(f"written to {FLAGS.out} and {os.path.splitext(FLAGS.out)[0]}.json", flush=True)


def run_worker() -> None:
  size, seq_len, gpu = FLAGS.sizes[0], int(FLAGS.seq_lens[0]), FLAGS.device == "gpu"
  if FLAGS.worker == "peak":
    result = run_peak()
  else:
    run = run_ours if FLAGS.worker == "ours" else run_torch
    result = run(size, seq_len, FLAGS.predictions, FLAGS.dtype, gpu)
  print(RESULT_MARKER + json.dumps(result), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.worker:
    run_worker()
  else:
    run_parent()


if __name__ == "__main__":
  app.run(main)
