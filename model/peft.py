"""Parameter-efficient fine-tuning: what each method adds to BERT and what it trains.

  none     every parameter trains (full fine-tuning)
  lora     W x + (alpha / r) B A x on the targeted encoder projections (Hu et al. 2021)
  adalora  W x + (alpha / r) Q diag(e) P x, the SVD form of Zhang et al. 2023; its
           importance-driven rank budget and orthogonality regulariser are in the
           optimizer (train/adalora.py), set by `adalora` below
  adapter  a bottleneck h + up(gelu(down h)) after the attention and feed-forward
           outputs, LayerNorms trained too (Houlsby et al. 2019)
  prefix   learned key/value vectors prepended in every layer, optionally produced
           by an MLP (Li & Liang 2021)
  prompt   learned input vectors after [CLS] (Lester et al. 2021)
  bitfit   the biases only (Ben Zaken et al. 2022)

Task heads (everything outside 'bert') always train. The modules here are
used by model/bert.py; `trainable` says which parameters the optimizer sees.
Target modules are named by their path inside a layer: attention.query,
attention.key, attention.value, attention.output, ffn.intermediate,
ffn.output; a pattern (fnmatch) may match the whole path or its last part,
so HF-style 'query' / 'value' work too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

METHODS = ("none", "lora", "adalora", "adapter", "prefix", "prompt", "bitfit")
LAYER_MODULES = (
  "attention.query",
  "attention.key",
  "attention.value",
  "attention.output",
  "ffn.intermediate",
  "ffn.output",
)


@dataclasses.dataclass(frozen=True)
class AdaLoraConfig:
  """The rank budget schedule (train/adalora.py); the paper's GLUE values as defaults."""

  target_rank: int = 4  # average non-zero singular values per matrix at the end
  warmup_ratio: float = 0.1  # t_i / total steps: every rank trains before any is cut
  final_ratio: float = 0.2  # t_f / total steps: the last stretch at the final pattern
  mask_interval: int = 10  # steps between reallocations (Delta T)
  beta1: float = 0.85  # EMA of the sensitivity |w * grad|
  beta2: float = 0.85  # EMA of its uncertainty
  orth_reg_weight: float = 0.1  # gamma: weight of the P / Q orthogonality regulariser


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  method: str = "none"
  rank: int = 8  # lora; adalora: the starting rank of every target
  alpha: float = 16.0  # the update is scaled by alpha / rank
  dropout: float = 0.0  # lora / adalora: dropout on the low-rank branch's input
  targets: tuple[str, ...] = ("attention.query", "attention.value")
  adapter_size: int = 64  # adapter bottleneck width
  num_virtual_tokens: int = 16  # prefix / prompt length
  prefix_projection: int = 0  # >0: prefixes come from an MLP of this width (reparameterised)
  adalora: AdaLoraConfig = AdaLoraConfig()

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"peft.method={self.method!r}: known methods are {METHODS}")
    if self.method in ("lora", "adalora"):
      if self.rank < 1:
        raise ValueError(f"peft.rank={self.rank}: must be at least 1")
      if not self.targets:
        raise ValueError(
          "peft.targets is empty: name the modules to adapt, e.g. "
          "('attention.query', 'attention.value')"
        )
      unknown = [p for p in self.targets if not any(_matches(p, m) for m in LAYER_MODULES)]
      if unknown:
        raise ValueError(
          f"peft.targets {unknown} match no module; the modules of a layer are {LAYER_MODULES}"
        )
      if not 0.0 <= self.dropout < 1.0:
        raise ValueError(f"peft.dropout={self.dropout}: must be in [0, 1)")
    if self.method == "adalora":
      schedule = self.adalora
      if not 1 <= schedule.target_rank <= self.rank:
        raise ValueError(
          f"peft.adalora.target_rank={schedule.target_rank}: must lie in [1, peft.rank={self.rank}]"
        )
      for key in ("warmup_ratio", "final_ratio", "beta1", "beta2"):
        if not 0.0 <= getattr(schedule, key) < 1.0:
          raise ValueError(f"peft.adalora.{key}={getattr(schedule, key)}: must be in [0, 1)")
      if schedule.mask_interval < 1:
        raise ValueError(f"peft.adalora.mask_interval={schedule.mask_interval}: must be >= 1")
      if schedule.orth_reg_weight < 0:
        raise ValueError(f"peft.adalora.orth_reg_weight={schedule.orth_reg_weight}: must be >= 0")
    if self.method == "adapter" and self.adapter_size < 1:
      raise ValueError(f"peft.adapter_size={self.adapter_size}: must be at least 1")
    if self.method in ("prefix", "prompt") and self.num_virtual_tokens < 1:
      raise ValueError(f"peft.num_virtual_tokens={self.num_virtual_tokens}: must be at least 1")

  @classmethod
  def from_dict(cls, values) -> PeftConfig:
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown peft keys {unknown}; known: {sorted(known)}")
    if "adalora" in values:
      schedule = dict(values["adalora"] or {})
      known_schedule = {f.name for f in dataclasses.fields(AdaLoraConfig)}
      unknown = sorted(set(schedule) - known_schedule)
      if unknown:
        raise ValueError(f"unknown peft.adalora keys {unknown}; known: {sorted(known_schedule)}")
      values["adalora"] = AdaLoraConfig(**schedule)
    if "targets" in values:
      targets = values["targets"]
      values["targets"] = tuple(
        t for t in (targets.split(",") if isinstance(targets, str) else targets) if t
      )
    return cls(**values)

  @property
  def low_rank(self) -> bool:
    return self.method in ("lora", "adalora")

  def targets_module(self, name: str) -> bool:
    return self.low_rank and any(_matches(p, name) for p in self.targets)

  @property
  def virtual_tokens(self) -> int:
    """Extra attention positions the method adds (prefix / prompt), else 0."""
    return self.num_virtual_tokens if self.method in ("prefix", "prompt") else 0


def _matches(pattern: str, module: str) -> bool:
  return fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(module.split(".")[-1], pattern)


def check_sequence_fits(peft: PeftConfig, max_seq_length: int, max_positions: int) -> None:
  """Prefix / prompt vectors take attention positions: the total must fit the model."""
  if peft.virtual_tokens and peft.virtual_tokens + max_seq_length > max_positions:
    raise ValueError(
      f"peft.num_virtual_tokens={peft.virtual_tokens} + data.max_seq_length={max_seq_length} "
      f"exceeds model.max_position_embeddings={max_positions}: shorten one of them"
    )


def trainable(peft: PeftConfig):
  """An nnx filter (path, value) -> bool: the parameters this method trains."""

  def keep(path, _value) -> bool:
    names = [str(p) for p in path]
    if names[0] != "bert" or peft.method == "none":
      return True  # task heads always train
    if peft.low_rank:
      return "low_rank" in names
    if peft.method == "adapter":
      return "adapter" in names or "norm" in names
    if peft.method in ("prefix", "prompt"):
      return names[1] == peft.method
    return names[-1] == "bias"  # bitfit

  return keep


def _param(value, names):
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


class LowRank(nnx.Module):
  """The low-rank branch of a Dense: (alpha / r) B diag(e) A x, e only for adalora.

  Works on any einsum Dense: the kernel's letters shared with the input are
  its input side (A maps them to r), the rest its output side (B maps r to them).
  """

  def __init__(
    self, spec: str, kernel_shape, kernel_names, name: str, peft: PeftConfig, rngs: nnx.Rngs
  ):
    x_letters, rest = spec.split(",")
    kernel_letters, y_letters = rest.split("->")
    n_in = sum(1 for c in kernel_letters if c in x_letters)
    in_letters, out_letters = kernel_letters[:n_in], kernel_letters[n_in:]
    if any(c in x_letters for c in out_letters) or "r" in spec:
      raise ValueError(f"LowRank cannot split the einsum {spec!r}")
    fan_in = math.prod(kernel_shape[:n_in])
    fan_out = math.prod(kernel_shape[n_in:])
    if peft.rank > min(fan_in, fan_out):
      raise ValueError(
        f"peft.rank={peft.rank} exceeds {name}'s smaller side ({fan_in} in, {fan_out} out)"
      )
    mid = "".join(c for c in x_letters if c not in in_letters) + "r"
    self.down_spec = f"{x_letters},{in_letters}r->{mid}"
    self.up_spec = f"{mid},r{out_letters}->{y_letters}"
    self.scale = peft.alpha / peft.rank
    self.dropout = peft.dropout
    in_shape, in_names = tuple(kernel_shape[:n_in]), tuple(kernel_names[:n_in])
    out_shape, out_names = tuple(kernel_shape[n_in:]), tuple(kernel_names[n_in:])
    r = peft.rank
    if peft.method == "lora":
      # As Hu et al. and HF PEFT: A uniform in +-1/sqrt(fan_in), B zero, so the start is W.
      bound = 1.0 / math.sqrt(fan_in)
      a = jax.random.uniform(rngs.params(), in_shape + (r,), jnp.float32, -bound, bound)
      b = jnp.zeros((r,) + out_shape, jnp.float32)
      self.e = None
    else:
      # AdaLoRA: P and Q small random, the singular values e zero, so the start is W.
      a = 0.02 * jax.random.normal(rngs.params(), in_shape + (r,), jnp.float32)
      b = 0.02 * jax.random.normal(rngs.params(), (r,) + out_shape, jnp.float32)
      self.e = _param(jnp.zeros((r,), jnp.float32), (None,))
    self.a = _param(a, in_names + (None,))
    self.b = _param(b, (None,) + out_names)

  def __call__(self, x):
    """x: the Dense's input, after this branch's dropout (Dense applies it)."""
    h = jnp.einsum(self.down_spec, x, self.a[...].astype(x.dtype))
    if self.e is not None:
      h = h * self.e[...].astype(x.dtype)
    return self.scale * jnp.einsum(self.up_spec, h, self.b[...].astype(x.dtype))


class Adapter(nnx.Module):
  """Houlsby's bottleneck: h + up(gelu(down h)); up starts at zero, so the start is h."""

  def __init__(self, hidden: int, size: int, rngs: nnx.Rngs):
    self.down = _param(0.01 * jax.random.normal(rngs.params(), (hidden, size)), ("embed", None))
    self.down_bias = _param(jnp.zeros((size,)), (None,))
    self.up = _param(jnp.zeros((size, hidden)), (None, "embed"))
    self.up_bias = _param(jnp.zeros((hidden,)), ("embed",))

  def __call__(self, h):
    z = jnp.einsum("btd,da->bta", h, self.down[...].astype(h.dtype)) + self.down_bias[...].astype(
      h.dtype
    )
    z = jax.nn.gelu(z, approximate=False)
    return (
      h
      + jnp.einsum("bta,ad->btd", z, self.up[...].astype(h.dtype))
      + self.up_bias[...].astype(h.dtype)
    )


class Prefix(nnx.Module):
  """Per-layer key and value prefixes [layers, 2, P, heads, head_dim].

  Direct: the prefixes are the parameters. Reparameterised (projection > 0):
  P learned vectors through Linear-tanh-Linear give every layer's prefixes, as
  Li & Liang found trains more stably; only the MLP's output is used at inference.
  """

  def __init__(
    self, layers: int, heads: int, head_dim: int, hidden: int, peft: PeftConfig, rngs: nnx.Rngs
  ):
    self.shape = (layers, 2, peft.num_virtual_tokens, heads, head_dim)
    n = peft.num_virtual_tokens
    width = peft.prefix_projection
    if width:
      self.tokens = _param(jax.random.normal(rngs.params(), (n, hidden)), (None, "embed"))
      self.hidden = _param(
        0.02 * jax.random.normal(rngs.params(), (hidden, width)), ("embed", None)
      )
      self.hidden_bias = _param(jnp.zeros((width,)), (None,))
      out = layers * 2 * heads * head_dim
      self.out = _param(0.02 * jax.random.normal(rngs.params(), (width, out)), (None, None))
      self.out_bias = _param(jnp.zeros((out,)), (None,))
      self.prefix = None
    else:
      self.prefix = _param(
        jax.random.normal(rngs.params(), self.shape), ("layers", None, None, "heads", "kv")
      )

  def __call__(self, dtype):
    if self.prefix is not None:
      return self.prefix[...].astype(dtype)
    h = jnp.tanh(self.tokens[...] @ self.hidden[...] + self.hidden_bias[...])
    flat = h @ self.out[...] + self.out_bias[...]  # [P, L*2*H*D]
    layers, two, n, heads, head_dim = self.shape
    kv = flat.reshape(n, layers, two, heads, head_dim).transpose(1, 2, 0, 3, 4)
    return kv.astype(dtype)


def merge_low_rank(tree: dict, peft: PeftConfig) -> dict:
  """A pure parameter tree with every LoRA / AdaLoRA branch folded into its kernel.

  kernel + (alpha / r) A diag(e) B, for each stacked layer; the result has no
  'low_rank' entries and runs as a plain BERT (export, serving). `tree` holds
  numpy arrays, e.g. from `train.checkpoint.read_on_host`.
  """
  if not isinstance(tree, dict):
    return tree
  out = {k: merge_low_rank(v, peft) for k, v in tree.items() if k != "low_rank"}
  branch = tree.get("low_rank")
  if branch is None:
    return out
  a, b = np.asarray(branch["a"]), np.asarray(branch["b"])
  kernel = np.asarray(tree["kernel"])
  r = a.shape[-1]
  lead = a.ndim + b.ndim - kernel.ndim - 2  # stacked layer axes (0 or 1)
  fan_in = int(np.prod(a.shape[lead:-1]))
  a2 = a.reshape(a.shape[:lead] + (fan_in, r))
  if "e" in branch:
    a2 = a2 * np.asarray(branch["e"])[..., None, :]
  b2 = b.reshape(b.shape[:lead] + (r, -1))
  delta = (peft.alpha / peft.rank) * np.matmul(a2.astype(np.float64), b2.astype(np.float64))
  out["kernel"] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
  return out
