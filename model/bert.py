"""The BERT encoder in Flax NNX: embeddings, self-attention, feed-forward, pooler.

Modules here own parameters only. Dropout takes an explicit PRNG key (None means
deterministic), so a merged module is a pure function of (params, inputs, key)
and the train step can be jitted, scanned and rematerialised freely.

Every parameter carries logical axis names ('vocab', 'embed', 'heads', 'kv',
'mlp', 'layers'); activations are constrained with 'batch', 'length' and the
'act_*' names. `train/mesh.py` maps both onto mesh axes; the model never
sees a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from model import quantize
from model.config import BertConfig
from model.peft import Adapter, LowRank, PeftConfig, Prefix

NO_PEFT = PeftConfig()

Array = jax.Array


def param(rngs: nnx.Rngs, shape, names, init: str = "normal", std: float = 0.02):
  """A float32 parameter tagged with logical axis names, created unsharded.

  Sharding happens once, when `train/state.py` jits the constructor with
  `out_shardings`; eager per-variable sharding is off so building the model
  needs no mesh.
  """
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def constrain(x: Array, names) -> Array:
  """Shards an activation by logical names; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, tuple(names))


def keep_mask(rng: Array, rate: float, shape) -> Array:
  """True where dropout at `rate` keeps an element: 16 random bits an element.

  One 32-bit random word decides two elements (its low and high halves, along the
  last axis, so the leading axes shard as the activation does): half the hashing
  of `jax.random.bernoulli`, which spends a word on each. An element is dropped
  with probability round(rate * 65536) / 65536 (0.1: 0.100006).
  """
  *lead, last = shape
  words = jax.random.bits(rng, (*lead, -(-last // 2)), jnp.uint32)
  halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]
  return halves >= jnp.uint32(round(rate * 65536))


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
  if rng is None or rate == 0.0:
    return x
  return jnp.where(keep_mask(rng, rate, x.shape), x / (1.0 - rate), 0).astype(x.dtype)


def activation(name: str):
  return {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
  }[name]


def compute_dtype(config: BertConfig):
  return jnp.dtype(config.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with float32 statistics whatever the compute dtype."""

  def __init__(self, size: int, eps: float, rngs: nnx.Rngs, axis_name: str = "embed"):
    self.scale = param(rngs, (size,), (axis_name,), "ones")
    self.bias = param(rngs, (size,), (axis_name,), "zeros")
    self.eps = eps

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
  """An affine map written as an einsum, so kernels can keep head axes apart.

  `spec` is an einsum such as 'btd,dhk->bthk'; the kernel's logical names
  follow its letters. Kernels are cast to the compute dtype at use. With a
  LoRA / AdaLoRA `peft` that targets `name`, a low-rank branch is added. With
  `quantization` (model/quantize.py) the kernel is int8 with a float32 scale per
  output channel, and the matmul runs through qwix.
  """

  def __init__(
    self,
    spec: str,
    kernel_shape,
    kernel_names,
    bias_names,
    rngs,
    std,
    name: str = "",
    peft: PeftConfig = NO_PEFT,
    quantization: str = "none",
  ):
    self.spec = spec
    self.quantization = quantization
    if quantization in ("none", "int8_qat"):
      self.kernel = param(rngs, kernel_shape, kernel_names, "normal", std)
    else:
      if peft.method != "none":
        raise ValueError(f"model.quantization={quantization!r} with peft.method={peft.method!r}")
      int8 = jnp.zeros(kernel_shape, jnp.int8)  # the values come from a float model
      self.kernel = nnx.Param(int8, out_sharding=tuple(kernel_names), eager_sharding=False)
      shape = quantize.scale_shape(kernel_shape, spec)
      names = [name if n > 1 else None for name, n in zip(kernel_names, shape)]
      setattr(self, quantize.SCALE, param(rngs, shape, names, "ones"))
    bias_shape = kernel_shape[len(kernel_shape) - len(bias_names) :]
    self.bias = param(rngs, bias_shape, bias_names, "zeros")
    self.low_rank = (
      LowRank(spec, kernel_shape, kernel_names, name, peft, rngs)
      if peft.targets_module(name)
      else None
    )

  def __call__(self, x: Array, rng: Array | None = None) -> Array:
    """rng: dropout key of the low-rank branch (None: no dropout)."""
    if self.quantization == "none":
      y = jnp.einsum(self.spec, x, self.kernel[...].astype(x.dtype))
    elif self.quantization == "int8_qat":
      y = self._fake_quantized(x)
    else:
      y = self._quantized(x).astype(x.dtype)
    y = y + self.bias[...].astype(x.dtype)
    if self.low_rank is not None:
      y = y + self.low_rank(dropout(x, self.low_rank.dropout, rng))
    return y

  def _per_token_axes(self) -> tuple[int, ...]:
    lhs, out = self.spec.split(",")[0], self.spec.split("->")[1]
    return tuple(i for i, letter in enumerate(lhs) if letter in out)

  def _quantized(self, x: Array) -> Array:
    qwix = quantize.require_qwix()
    scale = getattr(self, quantize.SCALE)[...]
    kernel = qwix.QArray(self.kernel[...], scale.astype(x.dtype), qtype=jnp.int8)
    if self.quantization == "int8":  # dynamic activation ranges: one scale per token
      x = qwix.quantize(x, jnp.int8, channelwise_axes=self._per_token_axes())
    return qwix.einsum(self.spec, x, kernel)

  def _fake_quantized(self, x: Array) -> Array:
    """The matmul of 'int8' on int8-rounded float values, with straight-through gradients
    (quantization-aware training): what the model computes once quantized, trainable."""
    kernel = self.kernel[...].astype(x.dtype)
    contracted = quantize.contracted_axes(self.spec)
    channels = tuple(i for i in range(kernel.ndim) if i not in contracted)
    kernel = quantize.fake_quant(kernel, channels)
    return jnp.einsum(self.spec, quantize.fake_quant(x, self._per_token_axes()), kernel)


class Embeddings(nnx.Module):
  """word + position + token type, then LayerNorm and dropout."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    c, std = config, config.initializer_range
    self.config = c
    word = std * jax.random.normal(rngs.params(), (c.vocab_size, c.hidden_size))
    word = word.at[c.pad_token_id].set(0.0)  # as transformers' padding_idx init
    self.word = nnx.Param(word, out_sharding=("vocab", "embed"), eager_sharding=False)
    self.position = param(
      rngs, (c.max_position_embeddings, c.hidden_size), (None, "embed"), std=std
    )
    self.token_type = param(rngs, (c.type_vocab_size, c.hidden_size), (None, "embed"), std=std)
    self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, rngs)

  def __call__(self, input_ids, token_type_ids, position_ids=None, rng=None, prompt=None):
    """prompt: [P, hidden] vectors put after [CLS] (prompt tuning), normalised with the rest."""
    c = self.config
    if position_ids is None:
      position_ids = jnp.arange(input_ids.shape[1])[None, :]
    word = jnp.take(self.word[...], input_ids, axis=0)
    # transformers' padding_idx: looking up [PAD] gives its row no gradient (the tied
    # MLM decoder still trains it). Only span QA sees a difference: its loss reads
    # logits at padded positions.
    word = jnp.where((input_ids == c.pad_token_id)[..., None], jax.lax.stop_gradient(word), word)
    x = (
      word
      + jnp.take(self.position[...], position_ids, axis=0)
      + jnp.take(self.token_type[...], token_type_ids, axis=0)
    )
    if prompt is not None:
      prompt = jnp.broadcast_to(prompt[None].astype(x.dtype), (x.shape[0],) + prompt.shape)
      x = jnp.concatenate([x[:, :1], prompt, x[:, 1:]], axis=1)
    x = self.norm(x).astype(compute_dtype(c))
    x = constrain(x, ("batch", "length", "act_embed"))
    return dropout(x, c.hidden_dropout_prob, rng)


def segment_mask(segment_ids: Array) -> Array:
  """[batch, q, k] mask of packed rows: a token attends to the tokens of its own example only
  (segment ids 1, 2, ... per example; 0 is padding, attended by nobody)."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return same & (segment_ids[:, None, :] > 0)


def _heads_mask(mask: Array) -> Array:
  """A key mask [batch, k] or a full mask [batch, q, k] as [batch, 1, q or 1, k]."""
  return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]


def fused_attention(q, k, v, mask: Array, impl: str) -> Array:
  """`jax.nn.dot_product_attention` (impl 'xla' or 'cudnn'); q, k, v: [batch, length, heads, d].

  cuDNN takes a bias or mask only at its full [batch, heads, q, k] length, and a padding
  mask fastest as key lengths: a [batch, k] mask goes in as lengths (its ones come first,
  as every batch built here pads on the right), a [batch, q, k] one (packed rows)
  broadcast to [batch, 1, q, k].
  """
  if impl == "cudnn" and mask.ndim == 2:
    # At least 1: a row that is all padding attends to its first token, as finite as the
    # einsum path's uniform weights, instead of cuDNN's undefined 0-length softmax.
    lengths = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)
    return jax.nn.dot_product_attention(
      q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
    )
  mask = _heads_mask(mask)
  if impl == "cudnn":
    mask = jnp.broadcast_to(mask, (mask.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def attention_weights_einsum(q, k, mask, dropout_rate, rng):
  """Softmax(QK^T / sqrt(d)) in float32, masked keys set to the dtype minimum.

  mask: [batch, k] (padding) or [batch, q, k] (packed rows, `segment_mask`). A masked key's
  weight underflows to exactly 0, so what it holds cannot reach another example."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * scale
  logits = jnp.where(_heads_mask(mask), logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  return dropout(weights, dropout_rate, rng)


def _branch_rngs(rng, n: int, peft: PeftConfig):
  """Dropout keys for the low-rank branches, folded off so other masks stay as without PEFT."""
  if rng is None or not (peft.low_rank and peft.dropout > 0):
    return [None] * n
  return [jax.random.fold_in(rng, 1_000 + i) for i in range(n)]


class SelfAttention(nnx.Module):
  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    c, std = config, config.initializer_range
    self.config = c
    self.peft = peft
    shape = (c.hidden_size, c.num_attention_heads, c.head_dim)
    names = ("embed", "heads", "kv")
    dense = lambda name: Dense(
      "btd,dhk->bthk",
      shape,
      names,
      ("heads", "kv"),
      rngs,
      std,
      f"attention.{name}",
      peft,
      c.quantization,
    )
    self.query = dense("query")
    self.key = dense("key")
    self.value = dense("value")
    self.output = Dense(
      "bthk,hkd->btd",
      (c.num_attention_heads, c.head_dim, c.hidden_size),
      ("heads", "kv", "embed"),
      ("embed",),
      rngs,
      std,
      "attention.output",
      peft,
      c.quantization,
    )
    self.adapter = (
      Adapter(c.hidden_size, peft.adapter_size, rngs) if peft.method == "adapter" else None
    )
    self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, rngs)
    # Set by Encoder when a caller reads attention distributions (distillation): the call
    # then runs the einsum path and keeps the probabilities, before dropout, in `self.probs`.
    self.keep_probs = False

  def __call__(self, x, mask, rng=None, prefix=None):
    """prefix: [2, P, heads, head_dim] keys and values attended before the sequence."""
    c = self.config
    rng_probs, rng_out = (None, None) if rng is None else jax.random.split(rng)
    rng_q, rng_k, rng_v, rng_o = _branch_rngs(rng, 4, self.peft)
    heads = ("batch", "length", "act_heads", None)
    q = constrain(self.query(x, rng_q), heads)
    k = constrain(self.key(x, rng_k), heads)
    v = constrain(self.value(x, rng_v), heads)
    if prefix is not None:
      batch = x.shape[0]
      k = jnp.concatenate([jnp.broadcast_to(prefix[0], (batch,) + prefix.shape[1:]), k], axis=1)
      v = jnp.concatenate([jnp.broadcast_to(prefix[1], (batch,) + prefix.shape[1:]), v], axis=1)
      ones = jnp.ones((*mask.shape[:-1], prefix.shape[1]), bool)
      mask = jnp.concatenate([ones, mask], axis=-1)
    train_dropout = rng_probs is not None and c.attention_probs_dropout_prob > 0
    if self.keep_probs:
      probs = attention_weights_einsum(q, k, mask, 0.0, None)
      self.probs = nnx.Intermediate(probs)
      w = dropout(probs, c.attention_probs_dropout_prob, rng_probs) if train_dropout else probs
      ctx = jnp.einsum("bhqk,bkhd->bqhd", w, v)
    elif c.attention_impl == "einsum" or train_dropout:
      # The fused kernels have no attention-probability dropout: fall back.
      w = attention_weights_einsum(q, k, mask, c.attention_probs_dropout_prob, rng_probs)
      ctx = jnp.einsum("bhqk,bkhd->bqhd", w, v)
    else:
      ctx = fused_attention(q, k, v, mask, c.attention_impl)
    ctx = constrain(ctx, heads)
    out = dropout(self.output(ctx, rng_o), c.hidden_dropout_prob, rng_out)
    if self.adapter is not None:
      out = self.adapter(out)
    return self.norm(out + x)


class FeedForward(nnx.Module):
  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    c, std = config, config.initializer_range
    self.config = c
    self.peft = peft
    self.intermediate = Dense(
      "btd,df->btf",
      (c.hidden_size, c.intermediate_size),
      ("embed", "mlp"),
      ("mlp",),
      rngs,
      std,
      "ffn.intermediate",
      peft,
      c.quantization,
    )
    self.output = Dense(
      "btf,fd->btd",
      (c.intermediate_size, c.hidden_size),
      ("mlp", "embed"),
      ("embed",),
      rngs,
      std,
      "ffn.output",
      peft,
      c.quantization,
    )
    self.adapter = (
      Adapter(c.hidden_size, peft.adapter_size, rngs) if peft.method == "adapter" else None
    )
    self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, rngs)

  def __call__(self, x, rng=None):
    c = self.config
    rng_i, rng_o = _branch_rngs(rng, 2, self.peft)
    h = activation(c.hidden_act)(self.intermediate(x, rng_i))
    h = constrain(h, ("batch", "length", "act_mlp"))
    out = dropout(self.output(h, rng_o), c.hidden_dropout_prob, rng)
    if self.adapter is not None:
      out = self.adapter(out)
    return self.norm(out + x)


class Layer(nnx.Module):
  """One post-LayerNorm transformer block, as in the BERT paper."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    self.attention = SelfAttention(config, rngs, peft)
    self.ffn = FeedForward(config, rngs, peft)

  def __call__(self, x, mask, rng=None, prefix=None):
    rng_attn, rng_ffn = (None, None) if rng is None else jax.random.split(rng)
    x = self.attention(x, mask, rng_attn, prefix)
    x = self.ffn(x, rng_ffn)
    return constrain(x, ("batch", "length", "act_embed"))


_REMAT_POLICIES = {
  "full": None,  # save nothing, recompute the whole layer
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@jax.tree_util.register_pytree_node_class
class LayerSlices(tuple):
  """A stacked parameter held as one array per layer (`unstack_layers`): `[...]` is the whole
  stack, `[i]` layer i's array, with no slice in the compiled program."""

  def __getitem__(self, index):
    return self if index is Ellipsis else tuple.__getitem__(self, index)

  def tree_flatten(self):
    return tuple(self), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(children)


def unstack_layers(state: nnx.State) -> nnx.State:
  """`state` with each stacked encoder parameter split into its layers, once, for inference.

  In a jitted forward, layer i's slice of a stacked kernel is a copy: the whole encoder's
  weights are copied at every call. Training amortises that over a batch; one sentence at
  a time does not (all-MiniLM-L6-v2 on 2 CPU cores: 36 ms a sentence instead of 13). The
  unrolled forward (`scan_layers=False`) reads the split state as it reads the stacked one.
  """

  def split(variable):
    names = variable.get_metadata().get("out_sharding")
    if not names or names[0] != "layers":
      return variable
    stacked = variable.get_value()
    return variable.replace(LayerSlices(stacked[i] for i in range(stacked.shape[0])))

  return jax.tree.map(split, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _layer(stacked: nnx.State, i: int) -> nnx.State:
  """Layer i of the stacked parameters, its sharding names without the 'layers' axis (as a
  layer's own parameters have them: libraries that read them, such as qwix, see one layer)."""

  def take(variable):
    names = variable.get_metadata().get("out_sharding")
    taken = variable.replace(variable[...][i])
    if names and names[0] == "layers":
      taken.set_metadata("out_sharding", tuple(names[1:]))
    return taken

  return jax.tree.map(take, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Encoder(nnx.Module):
  """The layer stack. Parameters are always stacked on a leading 'layers' axis.

  One parameter layout serves both ways of running it: `scan_layers` compiles
  one layer body and loops with `lax.scan` (compile time flat in depth), the
  plain way unrolls a Python loop over slices. Checkpoints move between them.
  """

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    self.config = config

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
      return Layer(config, rngs, peft)

    self.layers = make_layers(rngs)
    # Set by a caller that reads every layer's output (distillation, train/distill.py): a
    # call then also keeps them, [layers, batch, length, hidden], in `self.hidden_states`,
    # and every layer's attention distributions, [layers, batch, heads, q, k], in
    # `self.attention_probs`.
    self.keep_hidden_states = False
    self.keep_attention_probs = False

  def __call__(self, x, mask, rng=None, prefix=None):
    """prefix: [layers, 2, P, heads, head_dim] (prefix tuning) or None."""
    c = self.config
    graphdef, stacked = nnx.split(self.layers)
    n = c.num_hidden_layers
    rngs = None if rng is None else jax.random.split(rng, n)

    keep_probs = self.keep_attention_probs

    def body(h, layer_state, layer_rng, layer_prefix):
      layer = nnx.merge(graphdef, layer_state)
      layer.attention.keep_probs = keep_probs
      h = layer(h, mask, layer_rng, layer_prefix)
      return h, (layer.attention.probs[...] if keep_probs else None)

    if c.remat_policy != "none":
      body = jax.checkpoint(
        body, policy=_REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers
      )
    if c.scan_layers:
      split = jax.tree.leaves(stacked, is_leaf=lambda x: isinstance(x, LayerSlices))
      if any(isinstance(leaf, LayerSlices) for leaf in split):
        raise ValueError("unstack_layers' parameters run unrolled: set scan_layers=False")
      keep = self.keep_hidden_states

      def step(h, xs):
        h, probs = body(h, *xs)
        return h, (h if keep else None, probs)

      x, (hidden, probs) = jax.lax.scan(step, x, (stacked, rngs, prefix))
    else:
      hidden, probs = [], []
      for i in range(n):
        layer_state = _layer(stacked, i)
        x, layer_probs = body(
          x, layer_state, None if rngs is None else rngs[i], None if prefix is None else prefix[i]
        )
        hidden.append(x)
        probs.append(layer_probs)
      hidden = jnp.stack(hidden) if self.keep_hidden_states else None
      probs = jnp.stack(probs) if keep_probs else None
    if self.keep_hidden_states:
      self.hidden_states = nnx.Intermediate(hidden)
    if keep_probs:
      self.attention_probs = nnx.Intermediate(probs)
    return x


class Pooler(nnx.Module):
  """tanh(W h_[CLS] + b): the sentence vector NSP and classifiers read."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    self.dense = Dense(
      "bd,de->be",
      (config.hidden_size, config.hidden_size),
      ("embed", None),
      (None,),
      rngs,
      config.initializer_range,
    )

  def __call__(self, sequence_output, cls_positions=None):
    """The row's first token; with cls_positions [batch, slots] (packed rows), those tokens:
    [batch, slots, hidden]."""
    if cls_positions is None:
      return jnp.tanh(self.dense(sequence_output[:, 0]))
    picked = jnp.take_along_axis(sequence_output, cls_positions[..., None], axis=1)
    flat = picked.reshape(-1, picked.shape[-1])
    return jnp.tanh(self.dense(flat)).reshape(picked.shape[:2] + (-1,))


class BertModel(nnx.Module):
  """Embeddings, encoder and pooler; returns (sequence_output, pooled_output).

  `peft` adds what a parameter-efficient method needs (model/peft.py). Prompt
  vectors sit after [CLS] and are cut out of the sequence output again, so
  heads see one vector per input token whatever the method.
  """

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    c = config
    self.config = c
    self.embeddings = Embeddings(c, rngs)
    self.encoder = Encoder(c, rngs, peft)
    self.pooler = Pooler(c, rngs)
    self.prefix = (
      Prefix(c.num_hidden_layers, c.num_attention_heads, c.head_dim, c.hidden_size, peft, rngs)
      if peft.method == "prefix"
      else None
    )
    self.prompt = (
      param(
        rngs, (peft.num_virtual_tokens, c.hidden_size), (None, "embed"), std=c.initializer_range
      )
      if peft.method == "prompt"
      else None
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    *,
    position_ids=None,
    segment_ids=None,
    dropout_rng=None,
  ):
    """segment_ids [batch, length]: packed rows (several examples a row, 1, 2, ... each; 0 is
    padding). Attention stays inside each example; give position_ids restarting at each."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    mask = attention_mask.astype(bool)
    if segment_ids is not None:
      if self.prompt is not None:
        raise ValueError("packed rows (segment_ids) and prompt tuning do not combine")
      mask = segment_mask(segment_ids)
    rng_embed, rng_layers = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    prompt = None if self.prompt is None else self.prompt[...]
    x = self.embeddings(input_ids, token_type_ids, position_ids, rng_embed, prompt)
    if prompt is not None:
      mask = jnp.concatenate(
        [mask[:, :1], jnp.ones((mask.shape[0], prompt.shape[0]), bool), mask[:, 1:]], axis=1
      )
    prefix = None if self.prefix is None else self.prefix(x.dtype)
    x = self.encoder(x, mask, rng_layers, prefix)
    if prompt is not None:
      x = jnp.concatenate([x[:, :1], x[:, 1 + prompt.shape[0] :]], axis=1)
    return x, self.pooler(x)
