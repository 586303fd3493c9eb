"""Packed rows (data/packing.py): the same numbers as unpacked, no attention across examples,
one compile, exact resume, and the packing efficiency of known lengths."""

import logging

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import assert_bitwise_equal, saved_state
from helpers import finetune as ff

from data import packing
from data.sampling import EpochSampler, LengthBalancedSampler
from model.config import BertConfig
from model.heads import BertForQuestionAnswering, BertForSequenceClassification
from train import loop
from train import mesh as mesh_lib
from train.losses import ClassificationObjective, SpanObjective
from train.run import build_run
from train.writers import read_metrics

LENGTHS = [5, 3, 7, 2, 6, 1]


def test_first_fit_decreasing_and_the_efficiency_of_known_lengths():
  # Longest first: 7 -> row 0, 6 -> row 1, 5 -> row 2, 3 -> row 0, 2 -> row 1, 1 -> row 1.
  assert packing.first_fit(LENGTHS, 10) == [[2, 1], [4, 3, 5], [0]]
  sampler = EpochSampler(len(LENGTHS), len(LENGTHS), seed=0, what="rows")
  shape, efficiency = packing.plan_shape(np.array(LENGTHS), sampler, 1, 10)
  assert shape == packing.PackedShape(rows=3, slots=3, length=10)
  assert efficiency == 24 / 30
  shape, efficiency = packing.plan_shape(np.array(LENGTHS), sampler, 1, 10, multiple=4)
  assert shape.rows == 4 and efficiency == 24 / 40
  with pytest.raises(ValueError, match="an example of 11 tokens is longer than a row"):
    packing.first_fit([11], 10)


def test_length_balanced_steps_keep_each_windows_examples_and_need_fewer_rows():
  # Sentence lengths like SST-2's (mostly short, a few long): 40 steps of 32 an epoch.
  rng = np.random.default_rng(0)
  lengths = np.minimum(4 + rng.geometric(0.1, 40 * 32 + 5), 66)
  plain = EpochSampler(len(lengths), 32, seed=3)
  balanced = LengthBalancedSampler(lengths, 32, seed=3, window_steps=16)
  assert balanced.steps_per_epoch == plain.steps_per_epoch == 40
  for first, last in ((0, 16), (16, 32), (32, 40), (40, 56)):  # windows; 32-40 ends the epoch
    same = [
      np.sort(np.concatenate([s.indices(i) for i in range(first, last)])) for s in (plain, balanced)
    ]
    np.testing.assert_array_equal(*same)
    assert all(len(balanced.indices(i)) == 32 for i in range(first, last))
  # A pure function of (seed, step): a fresh sampler asked out of order agrees.
  again = LengthBalancedSampler(lengths, 32, seed=3, window_steps=16)
  for step in (45, 3, 17, 3):
    np.testing.assert_array_equal(again.indices(step), balanced.indices(step))
  # Dealt longest first to the lightest step: totals within one long sentence of each other,
  # so the run's one shape needs fewer rows of 128 than random grouping does.
  totals = [lengths[balanced.indices(i)].sum() for i in range(16)]
  assert max(totals) - min(totals) <= lengths.max()
  plain_shape, plain_share = packing.plan_shape(lengths, plain, 40, 128)
  shape, share = packing.plan_shape(lengths, balanced, 40, 128)
  assert shape.rows < plain_shape.rows and share > plain_share


def examples(seed=0, n=6, length=16):
  """n token rows of LENGTHS-like lengths ([CLS] ... [SEP]), padded to `length`."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, length), np.int32)
  for i, size in enumerate(np.array(LENGTHS * 2)[:n] + 2):
    ids[i, :size] = [2, *rng.integers(5, 60, size - 2), 3]
  return {
    "input_ids": ids,
    "token_type_ids": np.zeros_like(ids),
    "attention_mask": (ids > 0).astype(np.int32),
    "label": rng.integers(0, 3, n).astype(np.int32),
    "weight": np.ones(n, np.float32),
  }


def model(attention_impl="einsum", dtype="float32"):
  config = BertConfig.from_dict(
    dict(ff.TINY, hidden_dropout_prob=0.0, attention_impl=attention_impl, dtype=dtype)
  )
  return BertForSequenceClassification(config, 3, nnx.Rngs(0))


def packed_logits(m, batch, shape):
  packed = packing.pack(batch, shape)
  logits = ClassificationObjective(3).outputs(m, packed, None)["logits"]
  return packed, np.asarray(logits)


ON_GPU = jax.default_backend() == "gpu"
# cuDNN's fused attention takes bfloat16 only, and runs only on a GPU (run there with
# JAX_PLATFORMS= unset so that conftest's CPU default does not apply).
IMPLS = [
  ("einsum", "float32", 2e-5),
  ("xla", "float32", 2e-5),
  pytest.param(
    "cudnn", "bfloat16", 3e-2, marks=pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
  ),
]


@pytest.mark.parametrize("attention_impl,dtype,atol", IMPLS)
def test_packed_rows_give_each_examples_logits_and_loss_as_unpacked(attention_impl, dtype, atol):
  m, batch = model(attention_impl, dtype), examples()
  objective = ClassificationObjective(3)
  unpacked = objective.outputs(m, batch, None)
  shape = packing.PackedShape(rows=3, slots=3, length=16)
  with_order = dict(batch, order=np.arange(6, dtype=np.int32))  # to find each example again
  packed = packing.pack(with_order, shape)
  assert packed["segment_ids"].shape == (3, 16) and packed["label"].shape == (3, 3)
  logits = np.asarray(objective.outputs(m, packed, None)["logits"])
  placed = np.zeros((6, 3), np.float32)
  for r, slot in zip(*np.nonzero(packed["weight"])):
    placed[packed["order"][r, slot]] = logits[r, slot]
  np.testing.assert_allclose(placed, np.asarray(unpacked["logits"], np.float32), atol=atol)
  norm = objective.normalizers(batch)
  assert float(objective.normalizers(packed)["examples"]) == float(norm["examples"]) == 6
  loss_unpacked, sums_unpacked = objective.loss_and_sums(unpacked, batch, norm)
  loss_packed, sums_packed = objective.loss_and_sums({"logits": logits}, packed, norm)
  np.testing.assert_allclose(float(loss_packed), float(loss_unpacked), rtol=atol / 2)
  assert float(sums_packed["correct"]) == float(sums_unpacked["correct"])


def test_no_attention_crosses_an_example_boundary():
  """Change one example's tokens: every other example's logits stay bitwise the same, those
  in its own row included."""
  m, batch = model(), examples()
  shape = packing.PackedShape(rows=3, slots=3, length=16)
  before, a = packed_logits(m, batch, shape)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["input_ids"][1, 1:4] = [7, 8, 9]
  after, b = packed_logits(m, changed, shape)
  np.testing.assert_array_equal(before["segment_ids"], after["segment_ids"])
  layout = packing.first_fit(batch["attention_mask"].sum(-1), 16)
  row = next(r for r, members in enumerate(layout) if 1 in members)
  slot = layout[row].index(1)
  assert len(layout[row]) > 1  # it shares its row with other examples
  others = np.ones(a.shape[:2], bool)
  others[row, slot] = False
  others &= before["weight"] > 0
  assert np.any(a[row, slot] != b[row, slot])
  np.testing.assert_array_equal(a[others], b[others])


def packed_config(path, make_config=ff.classification_config, **overrides):
  path.mkdir(exist_ok=True)
  return make_config(path, **{"data.packing": True, "epochs": 2, **overrides})


def test_a_packed_run_learns_compiles_once_and_logs_its_packing(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      loop.train_and_evaluate(packed_config(tmp_path / "data"), workdir)
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
  assert len(compiles) == 1
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"]
  assert train[-1]["compiled_lengths"] == 1
  # 8 sentences of 7 to 11 tokens in rows of 32: 8 rows (one per device) instead of 8 x 32.
  assert all(r["real_token_fraction"] > 0.25 for r in train)


@pytest.mark.slow
def test_resume_is_bitwise_exact_with_packing(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(packed_config(tmp_path / "a"), straight)
  loop.train_and_evaluate(packed_config(tmp_path / "b", stop_at_step=5), resumed)
  assert saved_state(resumed)[0] == 5
  loop.train_and_evaluate(packed_config(tmp_path / "b"), resumed)
  step_a, a = saved_state(straight)
  step_b, b = saved_state(resumed)
  assert step_a == step_b == 16
  assert_bitwise_equal(a, b)


@pytest.mark.parametrize("make_config", [ff.classification_config, ff.ner_config])
def test_a_packed_train_step_matches_the_unpacked_one(tmp_path, make_config):
  """The same examples, packed and not: the same loss and the same update (dropout off).
  NER's loss is per labelled token; each token weighs as its own example."""
  runs = []
  for packed in (True, False):
    config = packed_config(tmp_path / str(packed), make_config, **{"data.packing": packed})
    config.model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    runs.append(build_run(config, str(tmp_path / str(packed) / "run")))
  # A packed run groups examples into steps by length: give the unpacked run the same step.
  runs[1].task.train_data.sampler = runs[0].task.train_data.sampler
  steps = []
  for run in runs:
    batch = mesh_lib.shard_batch(run.task.train_data.batch(0), run.mesh, run.rules)
    with mesh_lib.activate(run.mesh, run.rules):
      state, metrics = run.train_step(run.state, run.frozen, batch)
    steps.append((jax.device_get(metrics), jax.device_get(state.params)))
  packed_batch = runs[0].task.train_data.batch(0)
  assert packed_batch["segment_ids"].shape[1] == runs[0].config.data.max_seq_length
  assert packed_batch["segment_ids"].max() > 1  # some row holds several examples
  assert "segment_ids" not in runs[1].task.train_data.batch(0)
  np.testing.assert_allclose(steps[0][0]["loss"], steps[1][0]["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), steps[0][1], steps[1][1])


def test_packed_qa_windows_score_their_own_tokens():
  """Span logits of a packed row, read per example: each window's start and end scores are
  its unpacked scores at its own tokens (the answer positions moved with it), every other
  token of the row out of its softmax. Unpacked, BERT's (and transformers') softmax also
  runs over the padding after a window; packed there is none, so the loss is the unpacked
  logits' cross-entropy over each window's real tokens."""
  config = BertConfig.from_dict(dict(ff.TINY, hidden_dropout_prob=0.0))
  m, batch = BertForQuestionAnswering(config, nnx.Rngs(0)), examples()
  lengths = batch["attention_mask"].sum(-1)
  rng = np.random.default_rng(1)
  batch["start_positions"] = np.array([rng.integers(0, n) for n in lengths], np.int32)
  batch["end_positions"] = np.minimum(batch["start_positions"] + 1, lengths - 1).astype(np.int32)
  del batch["label"]
  objective = SpanObjective()
  unpacked = objective.outputs(m, batch, None)
  shape = packing.PackedShape(rows=3, slots=3, length=16)
  packed = packing.pack(dict(batch, order=np.arange(6, dtype=np.int32)), shape)
  out = objective.outputs(m, packed, None)
  assert out["start_logits"].shape == (3, 3, 16)
  norm = objective.normalizers(batch)
  want = 0.0
  for r, slot in zip(*np.nonzero(packed["weight"])):
    i, n = packed["order"][r, slot], lengths[packed["order"][r, slot]]
    start = packed["cls_positions"][r, slot]
    for key, position in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
      own = np.asarray(out[key][r, slot])
      np.testing.assert_allclose(own[start : start + n], unpacked[key][i, :n], atol=2e-5)
      assert np.all(np.delete(own, np.arange(start, start + n)) == np.finfo(np.float32).min)
      assert packed[position][r, slot] == batch[position][i] + start
      real = np.asarray(unpacked[key][i, :n], np.float64)
      log_z = np.log(np.exp(real - real.max()).sum()) + real.max()
      want += (log_z - real[batch[position][i]]) / 2
  loss, sums = objective.loss_and_sums(out, packed, norm)
  np.testing.assert_allclose(float(loss), want / 6, rtol=1e-5)
  assert float(sums["count"]) == 6


def test_packing_refuses_what_it_cannot_pack_by_name(tmp_path):
  from train import tasks
  from train.tasks.common import check_packable

  config = ff.tiny_config("multiple_choice", tmp_path, **{"data.packing": True})
  with pytest.raises(ValueError, match="task='multiple_choice' cannot pack yet"):
    check_packable(tasks.get("multiple_choice"), config)


def mlm_rows():
  """Three examples [CLS] ... [SEP] (5, 7 and 4 tokens): unpacked, one a row of 16, and packed
  into one row of 16; two masked positions each."""
  rng = np.random.default_rng(0)
  examples = [[2, *rng.integers(5, 60, n - 2), 3] for n in (5, 7, 4)]
  unpacked = np.zeros((3, 16), np.int32)
  for i, example in enumerate(examples):
    unpacked[i, : len(example)] = example
  packed = np.concatenate(examples)[None].astype(np.int32)
  positions = np.array([[1, 3], [2, 5], [1, 2]], np.int32)
  starts = np.array([0, 5, 12])
  return unpacked, packed, positions, (positions + starts[:, None]).reshape(1, 6)


def mlm_logits(m, ids, positions, packed):
  from data.pretraining import example_segments

  mask = (ids > 0).astype(np.int32)
  extra = example_segments({"input_ids": ids, "attention_mask": mask}, 2) if packed else {}
  out = m(ids, np.zeros_like(ids), mask, masked_positions=positions, **extra)
  return np.asarray(out["mlm_logits"]).reshape(-1, out["mlm_logits"].shape[-1])


@pytest.mark.parametrize("attention_impl", ["einsum", "xla"])
def test_packed_pretraining_rows_give_each_examples_mlm_logits(attention_impl):
  """data.packing for pretraining: an example's MLM logits in a packed row equal its own
  row's (fp32, 2e-5), and changing one example leaves the others' bitwise unchanged."""
  from model.heads import BertForPreTraining

  config = BertConfig.from_dict(
    dict(ff.TINY, hidden_dropout_prob=0.0, attention_impl=attention_impl, dtype="float32")
  )
  m = BertForPreTraining(config, nnx.Rngs(0))
  unpacked, packed, positions, packed_positions = mlm_rows()
  alone = mlm_logits(m, unpacked, positions, packed=False)
  together = mlm_logits(m, packed, packed_positions, packed=True)
  np.testing.assert_allclose(together, alone, atol=2e-5)
  changed = packed.copy()
  changed[0, 6:9] = [7, 8, 9]  # inside the second example
  after = mlm_logits(m, changed, packed_positions, packed=True)
  np.testing.assert_array_equal(after[[0, 1, 4, 5]], together[[0, 1, 4, 5]])
  assert np.any(after[2:4] != together[2:4])
