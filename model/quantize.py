"""int8 weights for the encoder's matmuls, through qwix (Google's JAX quantization library).

`model.quantization` picks what is int8 in each Dense of the encoder layers (query, key,
value, attention output, FFN in and out):
  'int8_weights'  the kernel is stored as int8 with one float32 scale per output channel
                  (symmetric, absmax); activations stay float (weight-only PTQ);
  'int8'          the same weights, and each matmul's input is quantized per token at run
                  time (dynamic, absmax), so the matmul itself is int8 x int8 (Q8BERT's
                  scheme, with dynamic instead of calibrated activation ranges);
  'int8_qat'      float weights, trained through the rounding of 'int8' (fake quantization,
                  straight-through gradients: quantization-aware training). Its workdir,
                  compressed with 'int8', computes what it trained to compute.
Embeddings, LayerNorms, the pooler and the task head stay float32, as do all biases.

A quantized model's parameter tree holds the int8 kernels and their `kernel_scale`s: that
is what its checkpoints save and load, with no float copy. `quantize_tree` makes it from a
float tree; `dequantize_tree` gives the float tree back (transformers has no int8 BERT, so
an export writes kernel * scale).
"""

from __future__ import annotations

import numpy as np

SCALE = "kernel_scale"


def require_qwix():
  try:
    import qwix
  except ImportError:
    raise ImportError(
      "model.quantization needs qwix: pip install -e '.[compress]' (or pip install qwix)"
    ) from None
  return qwix


def fake_quant(x, channelwise_axes: tuple[int, ...]):
  """x rounded to int8 and back (symmetric absmax per channel, as qwix quantizes it), with
  the gradient of the identity (straight-through): quantization-aware training."""
  import jax
  import jax.numpy as jnp

  qwix = require_qwix()
  rounded = qwix.dequantize(qwix.quantize(x, jnp.int8, channelwise_axes=channelwise_axes))
  return x + jax.lax.stop_gradient(rounded.astype(x.dtype) - x)


def contracted_axes(spec: str) -> tuple[int, ...]:
  """The kernel axes an einsum such as 'btd,dhk->bthk' sums over (here: d, axis 0)."""
  inputs, output = spec.split("->")
  kernel = inputs.split(",")[1]
  return tuple(i for i, letter in enumerate(kernel) if letter not in output)


def scale_shape(kernel_shape, spec: str) -> tuple[int, ...]:
  """One scale per output channel: 1 along the contracted axes, the kernel's size elsewhere."""
  contracted = contracted_axes(spec)
  return tuple(1 if i in contracted else n for i, n in enumerate(kernel_shape))


def quantize_kernel(kernel, scale_shape_: tuple[int, ...]):
  """(int8 values, float32 scales) of a float kernel, symmetric absmax per output channel, as
  qwix computes them. The channels are the axes where the scale has the kernel's size (a
  stacked 'layers' axis among them: each layer has its own scales)."""
  qwix = require_qwix()
  import jax.numpy as jnp

  kernel = np.asarray(kernel, np.float32)
  if len(scale_shape_) != kernel.ndim:
    raise ValueError(f"scale shape {scale_shape_} against kernel shape {kernel.shape}")
  channels = tuple(i for i, n in enumerate(scale_shape_) if n == kernel.shape[i])
  q = qwix.quantize(jnp.asarray(kernel), jnp.int8, channelwise_axes=channels)
  return np.asarray(q.qvalue), np.asarray(q.scale, np.float32)


def quantize_tree(tree: dict, reference: dict) -> dict:
  """`tree` (float) with each kernel that has a `kernel_scale` in `reference` (the quantized
  model's own tree, abstract is fine) replaced by int8 values and their scales."""
  out = {}
  for key, value in tree.items():
    ref = reference.get(key) if isinstance(reference, dict) else None
    if isinstance(value, dict) and isinstance(ref, dict):
      if SCALE in ref and "kernel" in value and SCALE not in value:
        kernel, scale = quantize_kernel(value["kernel"], tuple(ref[SCALE].shape))
        out[key] = dict(value, kernel=kernel, **{SCALE: scale})
      else:
        out[key] = quantize_tree(value, ref)
    else:
      out[key] = value
  return out


def dequantize_tree(tree: dict) -> dict:
  """The float tree of a quantized one: kernel = int8 kernel x its scale, scales dropped."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and SCALE in value:
      kernel = np.asarray(value["kernel"]).astype(np.float32) * np.asarray(value[SCALE])
      out[key] = {k: v for k, v in value.items() if k != SCALE} | {"kernel": kernel}
    elif isinstance(value, dict):
      out[key] = dequantize_tree(value)
    else:
      out[key] = value
  return out
