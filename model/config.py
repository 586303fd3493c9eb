"""BERT hyperparameters: transformers' `BertConfig` field for field, plus how to compute.

The architecture fields carry the same names and defaults as
`transformers.BertConfig`, so a `config.json` from the hub maps onto this class
one to one. The compute fields (dtype, scan, remat, attention kernel) say how
XLA should run the same maths and never change the parameter tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "tanh")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
QUANTIZATIONS = ("none", "int8_weights", "int8", "int8_qat")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  # Architecture: same names and defaults as transformers.BertConfig.
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  # transformers' PretrainedConfig field: False gives the MLM head its own decoder matrix
  # instead of reusing the word embeddings (decoupled embeddings, Chung et al. 2021).
  tie_word_embeddings: bool = True
  # Not a transformers field: the width of one head when it is not hidden_size /
  # num_attention_heads, as in a model whose heads were pruned (train/prune.py). 0: BERT's rule.
  attention_head_size: int = 0
  # Not a transformers field either: int8 encoder matmuls (model/quantize.py), 'none',
  # 'int8_weights' or 'int8' (weights and activations), which change the parameter tree, or
  # 'int8_qat': float weights trained through the int8 of 'int8' (quantization-aware).
  quantization: str = "none"
  # Compute: how to run it. Parameters are always float32.
  dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "einsum"

  def __post_init__(self):
    def check(ok: bool, key: str, why: str):
      if not ok:
        raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")

    for key in (
      "vocab_size",
      "hidden_size",
      "num_hidden_layers",
      "num_attention_heads",
      "intermediate_size",
      "max_position_embeddings",
      "type_vocab_size",
    ):
      check(
        isinstance(getattr(self, key), int) and getattr(self, key) > 0,
        key,
        "must be a positive integer",
      )
    if self.attention_head_size:
      check(
        self.attention_head_size > 0
        and self.hidden_size % self.attention_head_size == 0
        and self.num_attention_heads * self.attention_head_size <= self.hidden_size,
        "attention_head_size",
        f"must divide hidden_size={self.hidden_size} with num_attention_heads="
        f"{self.num_attention_heads} heads of it fitting in hidden_size (heads pruned from "
        "a BERT, which exports to transformers with the pruned heads as zeros)",
      )
    else:
      check(
        self.hidden_size % self.num_attention_heads == 0,
        "hidden_size",
        f"must be divisible by num_attention_heads={self.num_attention_heads}",
      )
    check(self.hidden_act in HIDDEN_ACTS, "hidden_act", f"one of {HIDDEN_ACTS}")
    check(self.dtype in COMPUTE_DTYPES, "dtype", f"one of {COMPUTE_DTYPES}")
    check(self.remat_policy in REMAT_POLICIES, "remat_policy", f"one of {REMAT_POLICIES}")
    check(self.attention_impl in ATTENTION_IMPLS, "attention_impl", f"one of {ATTENTION_IMPLS}")
    check(self.quantization in QUANTIZATIONS, "quantization", f"one of {QUANTIZATIONS}")
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      check(0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1)")
    check(
      0 <= self.pad_token_id < self.vocab_size,
      "pad_token_id",
      f"must be a token id below vocab_size={self.vocab_size}",
    )

  @property
  def head_dim(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def hf_num_attention_heads(self) -> int:
    """The head count transformers builds: a pruned model's heads plus zero heads."""
    return self.hidden_size // self.head_dim

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> BertConfig:
    """Builds from a config section; an unknown key is an error, not ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; known: {sorted(names)}")
    return cls(**dict(values))

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **compute: Any) -> BertConfig:
    """Reads the architecture from an HF `config.json` dict; extra HF keys are ignored."""
    if hf.get("model_type", "bert") != "bert":
      raise ValueError(f"config.json has model_type={hf.get('model_type')!r}, expected 'bert'")
    arch = {
      f.name: hf[f.name]
      for f in dataclasses.fields(cls)
      if f.name in hf and f.name not in ("dtype", "attention_head_size", "quantization")
    }
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        "only position_embedding_type='absolute' is supported, "
        f"config.json has {hf['position_embedding_type']!r}"
      )
    return cls(**arch, **compute)

  def to_hf_dict(self) -> dict[str, Any]:
    """The architecture part, as transformers' `BertConfig(**d)` takes it."""
    ours = {"attention_head_size", "quantization"}  # an export writes float, BERT-shaped heads
    compute = {"dtype", "scan_layers", "remat_policy", "attention_impl", *ours}
    hf = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in compute}
    hf["num_attention_heads"] = self.hf_num_attention_heads  # pruned heads come back as zeros
    return hf

  def replace(self, **changes: Any) -> BertConfig:
    return dataclasses.replace(self, **changes)
