"""Every test sees 8 fake CPU devices, so each mesh shape runs on one machine."""

import os

# XLA's CPU backend at optimisation level 0: the suite's programs are tiny, so compiling them
# is most of its time; unoptimised code compiles in about 60 % of it and every tolerance holds.
_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
# XLA:CPU's older loop emitters compile the suite's programs in about 60 % of the time the
# fusion emitters take (a tiny BERT train step on 8 devices: 4.4 s against 7.1 s).
if "xla_cpu_use_fusion_emitters" not in _flags:
  _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# AOT tests load libtpu; another process holding its lockfile must not fail them.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A test run never uploads: W&B records it locally, and the tests read those files.
os.environ["WANDB_MODE"] = "offline"
# A persistent XLA compilation cache for the suite and the jobs it starts in
# subprocesses (they inherit the environment): a second run, or a test that
# compiles what an earlier one did, reads the executable instead of compiling it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
