"""Every test sees 8 fake CPU devices, so each mesh shape runs on one machine."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
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
