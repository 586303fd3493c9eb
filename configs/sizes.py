"""BERT sizes by name, as the papers give them.

tiny/mini/small/medium: Turc et al. 2019, "Well-Read Students Learn Better"
(the 24 compact BERTs). base/large: Devlin et al. 2019, section 3.
minilm: all-MiniLM-L6-v2 (sentence-transformers; MiniLM, Wang et al. 2020), the
6-layer uncased BERT this codebase measures fine-tuning with; its heads are 32 wide.
Elsewhere heads are hidden/64. The feed-forward width is 4 x hidden throughout.
"""

import ml_collections

#          layers  hidden  heads
SIZES = {
  "tiny": (2, 128, 2),
  "mini": (4, 256, 4),
  "small": (4, 512, 8),
  "medium": (8, 512, 8),
  "minilm": (6, 384, 12),
  "base": (12, 768, 12),
  "large": (24, 1024, 16),
}


def bert(size: str, **overrides) -> ml_collections.ConfigDict:
  """The `model` section: every transformers.BertConfig field, plus compute options."""
  if size not in SIZES:
    raise ValueError(f"unknown BERT size {size!r}; known: {sorted(SIZES)}")
  layers, hidden, heads = SIZES[size]
  model = ml_collections.ConfigDict(
    dict(
      vocab_size=30522,
      hidden_size=hidden,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      intermediate_size=4 * hidden,
      hidden_act="gelu",
      hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.1,
      max_position_embeddings=512,
      type_vocab_size=2,
      initializer_range=0.02,
      layer_norm_eps=1e-12,
      pad_token_id=0,
      # False: the MLM head gets its own decoder matrix (pretraining only; fine-tuning heads
      # never read it, and an export says so in config.json as transformers does).
      tie_word_embeddings=True,
      # Not a transformers field: one head's width when fewer heads remain (a pruned model,
      # train/prune.py); 0 = hidden_size / num_attention_heads.
      attention_head_size=0,
      # int8 encoder matmuls (model/quantize.py): 'none' | 'int8_weights' | 'int8' (weights
      # and activations); changes the parameter tree, so a quantized model is its own run.
      quantization="none",
      # How to compute: float32 on CPU, bfloat16 on TPU/GPU; params stay float32.
      dtype="float32",
      scan_layers=False,
      remat_policy="none",  # 'full' | 'dots' | 'dots_no_batch'
      attention_impl="einsum",  # 'xla' / 'cudnn': jax.nn.dot_product_attention
    )
  )
  model.update(overrides)
  return model
