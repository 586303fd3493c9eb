"""Knowledge distillation (train/distill.py): the soft-target loss on known logits, the
teacher's logits entering the one train step on the task's own rows, a student that
learns from a teacher workdir and stands without it, and one-line refusals."""

import math
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import finetune as ff
from helpers import tiny_hf_config

from train import api, loop
from train import mesh as mesh_lib
from train.distill import soft_target_loss_sum
from train.errors import UserError
from train.run import build_run
from train.writers import read_metrics

CONFIGS = {
  "classification": ff.classification_config,
  "token_classification": ff.ner_config,
  "question_answering": ff.squad_config,
}
NO_DROPOUT = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}


def test_soft_target_loss_on_known_logits():
  # Teacher [ln 9, 0] at T=2 is softmax([ln 3, 0]) = [3/4, 1/4]; the student [0, 0] is
  # [1/2, 1/2]; KL = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4.
  kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
  teacher = np.array([[math.log(9.0), 0.0], [1.0, 2.0]], np.float32)
  student = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)
  got = soft_target_loss_sum(student, teacher, np.array([1.0, 1.0]), temperature=2.0)
  np.testing.assert_allclose(float(got), 4 * kl, rtol=1e-6)  # the second row agrees: 0
  weighted = soft_target_loss_sum(student, teacher, np.array([0.5, 3.0]), temperature=2.0)
  np.testing.assert_allclose(float(weighted), 2 * kl, rtol=1e-6)
  assert float(soft_target_loss_sum(teacher, teacher, np.ones(2), temperature=5.0)) == 0.0


def hf_teacher(path, task, num_labels, **overrides):
  """A random tiny transformers model with the task's head, saved with the tests' vocab."""
  import torch
  import transformers

  architecture = {
    "classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
  }[task]
  torch.manual_seed(1)
  config = tiny_hf_config(**dict(ff.TINY, num_labels=num_labels, **overrides))
  model = getattr(transformers, architecture)(config).eval()
  with torch.no_grad():  # a head of unit-scale weights: logits far from uniform
    for name, param in model.named_parameters():
      if name.startswith(("classifier.", "qa_outputs.")):
        param.normal_(0.0, 1.0)
  model.save_pretrained(str(path))
  ff.write_vocab(path / "vocab.txt")
  return str(path), model


def _kl_sum_by_hand(student, teacher, weights, t):
  def log_softmax(x):
    x = np.asarray(x, np.float64) / t
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  s, q = log_softmax(student), log_softmax(teacher)
  return float(np.sum((np.exp(q) * (q - s)).sum(-1) * np.asarray(weights)) * t * t)


@pytest.mark.parametrize(
  "task",
  [
    pytest.param("classification", marks=pytest.mark.slow),
    pytest.param("question_answering", marks=pytest.mark.slow),
    pytest.param("token_classification", marks=pytest.mark.slow),
  ],
)
def test_the_step_distils_the_teachers_logits_on_the_tasks_rows(tmp_path, task):
  """distill_loss and the total loss of a train step, against the teacher's and the
  student's logits computed outside it, on the rows and weights of the task loss."""
  config = CONFIGS[task](tmp_path, **NO_DROPOUT)
  labels = build_run(config, str(tmp_path / "plain")).labels
  teacher_dir, _ = hf_teacher(tmp_path / "teacher", task, len(labels) if labels else 2)
  config.distill.update(teacher=teacher_dir, temperature=2.0, soft_weight=0.3, hard_weight=0.7)
  run = build_run(config, str(tmp_path / "run"))
  batch = mesh_lib.shard_batch(run.task.train_data.batch(0), run.mesh, run.rules)
  objective = run.objective.task
  with mesh_lib.activate(run.mesh, run.rules):
    student = nnx.merge(run.graphdef, run.state.params, run.frozen)
    teacher = api.load(teacher_dir)[0].module
    student_out = objective.outputs(student, batch, None)
    teacher_out = objective.outputs(teacher, batch, None)
    norm = objective.normalizers(batch)
    hard = float(objective.loss_and_sums(student_out, batch, norm)[0])
    soft_sum = sum(
      _kl_sum_by_hand(student_out[name], teacher_out[name], weights, 2.0)
      for name, weights in objective.soft_targets(batch)
    )
    _, metrics = run.train_step(run.state, run.frozen, batch, run.teacher)
  assert soft_sum > 0.1
  np.testing.assert_allclose(float(metrics["distill_loss"]), soft_sum, rtol=2e-4)
  key = objective.soft_target_normalizer
  want = 0.7 * hard + 0.3 * soft_sum / float(norm[key])
  np.testing.assert_allclose(float(metrics["total_loss"]), want, rtol=2e-4)


def test_an_abstract_run_compiles_the_step_with_its_teacher(tmp_path):
  """What train.aot lowers: the teacher's parameters are an argument with shardings."""
  config = ff.classification_config(tmp_path, **{"data.train_path": ""})
  sizes = {}
  for teacher in ("", hf_teacher(tmp_path / "teacher", "classification", 2)[0]):
    config.distill.teacher = teacher
    run = build_run(config, abstract=True)
    with mesh_lib.activate(run.mesh, run.rules):
      lowered = run.train_step.lower(run.state, run.frozen, run.batch_shapes, run.teacher)
    sizes[bool(teacher)] = lowered.compile().memory_analysis().argument_size_in_bytes
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(run.teacher))
  teacher_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(run.teacher))
  # The teacher's parameters are arguments of the step (per device: replicated on this mesh).
  assert sizes[True] - sizes[False] >= teacher_bytes


@pytest.mark.slow
def test_a_student_learns_from_a_teacher_workdir_and_stands_without_it(tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  loop.train_and_evaluate(ff.classification_config(tmp_path, epochs=10), teacher_dir)
  student_dir = str(tmp_path / "student")
  config = ff.classification_config(tmp_path, seed=3, epochs=8)
  config.distill.update(teacher=teacher_dir, temperature=1.0, soft_weight=1.0, hard_weight=0.0)
  final = loop.train_and_evaluate(config, student_dir)
  train = [r["distill_loss"] for r in read_metrics(student_dir) if "distill_loss" in r]
  assert len(train) >= 3
  assert train[-1] < 0.25 * train[0]
  assert 0.0 <= final["accuracy"] <= 1.0
  # The student is an ordinary fine-tuned workdir: it loads and runs with the teacher gone.
  shutil.rmtree(teacher_dir)
  model, tokenizer = api.load(student_dir)
  logits = model(**tokenizer(["a fine film"], return_tensors="np"))["logits"]
  assert logits.shape == (1, 2)


def test_a_teacher_that_does_not_fit_is_refused_in_one_line(tmp_path):
  config = ff.classification_config(tmp_path)
  cases = [
    (str(tmp_path / "nowhere"), "no such directory"),
    (hf_teacher(tmp_path / "ner", "token_classification", 2)[0], "holds a 'token_classific"),
    (hf_teacher(tmp_path / "three", "classification", 3)[0], "3 labels against the task's 2"),
  ]
  for teacher, message in cases:
    config.distill.teacher = teacher
    with pytest.raises(UserError, match=f"distill.teacher={teacher}.*{message}"):
      build_run(config, str(tmp_path / "run"))
  vocab = ff.TINY["vocab_size"] + 8
  other_vocab = hf_teacher(tmp_path / "vocab", "classification", 2, vocab_size=vocab)[0]
  config.distill.teacher = other_vocab
  with pytest.raises(UserError, match=f"vocab_size {vocab} against the student's"):
    build_run(config, str(tmp_path / "run"))
  ok = hf_teacher(tmp_path / "ok", "classification", 2)[0]
  layers = ff.TINY["num_hidden_layers"]
  refusals = [  # (distill settings, message)
    (dict(hidden_weight=1.0, layer_map=(0, layers)), rf"distill.layer_map=\[0, {layers}\]: one"),
    (dict(hidden_weight=1.0, layer_map=(0,)), "for each of the student's"),
    (dict(temperature=0), "distill.temperature=0: must be > 0"),
  ]
  for settings, message in refusals:
    config.distill.update(dict(teacher=ok, hidden_weight=0.0, layer_map=(), temperature=2.0))
    config.distill.update(settings)
    with pytest.raises(UserError, match=message):
      build_run(config, str(tmp_path / "run"))
  from train.distill import DistillationObjective
  from train.losses import ClassificationObjective, PretrainingObjective

  for objective, kind in (
    (ClassificationObjective(1), "regression"),
    (PretrainingObjective(), "Pre"),
  ):
    with pytest.raises(UserError, match=f"distill.teacher: {kind}.* has no class distribution"):
      DistillationObjective(objective, None, 2.0, 0.5, 0.5)
  heads = ff.TINY["num_attention_heads"]
  config.distill.update(dict(layer_map=(), temperature=2.0, attention_weight=1.0))
  config.model.num_attention_heads = heads * 2
  with pytest.raises(UserError, match=f"the teacher has {heads} attention heads, the student"):
    build_run(config, str(tmp_path / "run"))


def test_a_student_starts_from_every_other_layer_of_its_teacher(tmp_path):
  from train import hf, warm_start

  config = ff.classification_config(tmp_path)
  source, _, _ = ff.write_hf_dir(tmp_path / "hf", config.data.vocab, num_hidden_layers=4)
  config.init.update(hf_dir=source, layers=(0, 2))
  run = build_run(config, str(tmp_path / "run"))
  assert run.model_config.num_hidden_layers == 2
  state, _ = warm_start.initialise(run.state, run.frozen, config.init, run.model_config, run.tx)
  got = nnx.to_pure_dict(state.params)["bert"]["encoder"]["layers"]
  _, tree, _ = hf.load_hf_checkpoint(source)
  want = tree["bert"]["encoder"]["layers"]
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w)[[0, 2]])
  config.init.layers = (1, 4)
  with pytest.raises(UserError, match=r"init.layers=\[1, 4\]: distinct indices of the source's 4"):
    build_run(config, str(tmp_path / "run2"))


def test_hidden_states_and_attention_are_distilled_from_the_mapped_teacher_layers(tmp_path):
  """A 2-layer student against a 4-layer transformers teacher: the step's hidden loss is the
  squared error to the outputs of the teacher's layers 1 and 3 (uniform map), its attention
  loss the KL from their attention distributions, both as PyTorch computes them."""
  import torch

  config = ff.classification_config(tmp_path, **NO_DROPOUT)
  teacher_dir, torch_teacher = hf_teacher(
    tmp_path / "teacher", "classification", 2, num_hidden_layers=4
  )
  torch_teacher.set_attn_implementation("eager")  # SDPA returns no attention probabilities
  config.distill.update(
    teacher=teacher_dir, soft_weight=0.3, hard_weight=0.7, hidden_weight=0.5, attention_weight=0.2
  )
  run = build_run(config, str(tmp_path / "run"))
  assert run.objective.layer_map == (1, 3)
  local = run.task.train_data.batch(0)
  batch = mesh_lib.shard_batch(local, run.mesh, run.rules)
  with torch.no_grad():
    teacher_out = torch_teacher(
      input_ids=torch.from_numpy(np.asarray(local["input_ids"])).long(),
      token_type_ids=torch.from_numpy(np.asarray(local["token_type_ids"])).long(),
      attention_mask=torch.from_numpy(np.asarray(local["attention_mask"])).long(),
      output_hidden_states=True,
      output_attentions=True,
    )
  hidden = teacher_out.hidden_states  # the embeddings, then each layer's output
  teacher_layers = np.stack([hidden[2].numpy(), hidden[4].numpy()], axis=1)
  teacher_probs = np.stack([teacher_out.attentions[i].numpy() for i in (1, 3)], axis=1)
  with mesh_lib.activate(run.mesh, run.rules):
    student = nnx.merge(run.graphdef, run.state.params, run.frozen)
    student.bert.encoder.keep_hidden_states = True
    student.bert.encoder.keep_attention_probs = True
    objective = run.objective.task
    student_out = objective.outputs(student, batch, None)
    student_layers = np.swapaxes(np.asarray(student.bert.encoder.hidden_states[...]), 0, 1)
    student_probs = np.swapaxes(np.asarray(student.bert.encoder.attention_probs[...]), 0, 1)
    norm = objective.normalizers(batch)
    hard = float(objective.loss_and_sums(student_out, batch, norm)[0])
    _, metrics = run.train_step(run.state, run.frozen, batch, run.teacher)
  mask = np.asarray(local["attention_mask"], np.float64)[:, None, :]
  errors = np.mean((student_layers.astype(np.float64) - teacher_layers) ** 2, axis=-1)
  hidden_sum = float(np.sum(errors * mask))
  assert hidden_sum > 0.1
  np.testing.assert_allclose(float(metrics["hidden_loss"]), hidden_sum, rtol=1e-4)
  # Attention rows: [batch, layers, heads, query, key]; masked keys are 0 on both sides.
  t, p = teacher_probs.astype(np.float64), np.maximum(student_probs.astype(np.float64), 1e-30)
  kl = np.where(t > 0, t * (np.log(np.maximum(t, 1e-30)) - np.log(p)), 0.0).sum(-1)
  attention_sum = float(np.sum(kl * mask[:, :, None, :]))
  assert attention_sum > 0.01
  np.testing.assert_allclose(float(metrics["attention_loss"]), attention_sum, rtol=1e-3)
  weight = np.asarray(local["weight"], np.float64)
  soft_sum = _kl_sum_by_hand(student_out["logits"], teacher_out.logits.numpy(), weight, 2.0)
  want = (
    0.7 * hard
    + 0.3 * soft_sum / weight.sum()
    + 0.5 * hidden_sum / (2 * mask.sum())
    + 0.2 * attention_sum / (2 * 2 * mask.sum())  # 2 layers x 2 heads a token
  )
  np.testing.assert_allclose(float(metrics["total_loss"]), want, rtol=2e-4)


@pytest.mark.slow
def test_a_narrower_student_distils_hidden_states_through_a_learned_projection(tmp_path):
  """TinyBERT's W_h: a 16-wide student against a 32-wide teacher. The hidden loss is the
  squared error of the projected student states; the projection trains with the student and
  stays out of what the workdir exports."""
  import torch
  from transformers import BertForSequenceClassification as TorchClassifier

  from train import hf
  from train.distill import PROJECTION

  narrow = {"model.hidden_size": 16, "model.intermediate_size": 32, **NO_DROPOUT}
  config = ff.classification_config(tmp_path, epochs=2, **narrow)
  teacher_dir, _ = hf_teacher(tmp_path / "teacher", "classification", 2)
  config.distill.update(teacher=teacher_dir, soft_weight=0.5, hard_weight=0.5, hidden_weight=1.0)
  config.optimizer.warmup_ratio = 0.0  # the first step moves the weights
  run = build_run(config, str(tmp_path / "probe"))
  before = jax.tree.map(np.array, nnx.to_pure_dict(run.state.params)[PROJECTION])
  assert before["kernel"].shape == (16, 32)
  local = run.task.train_data.batch(0)
  batch = mesh_lib.shard_batch(local, run.mesh, run.rules)
  with mesh_lib.activate(run.mesh, run.rules):
    taught = run.objective.with_teacher_outputs(run.teacher, batch)
    student = nnx.merge(run.graphdef, run.state.params, run.frozen)
    student.bert.encoder.keep_hidden_states = True
    run.objective.task.outputs(student, batch, None)
    hidden = np.swapaxes(np.asarray(student.bert.encoder.hidden_states[...]), 0, 1)
    new_state, metrics = run.train_step(run.state, run.frozen, batch, run.teacher)
  projected = hidden.astype(np.float64) @ before["kernel"] + before["bias"]
  errors = np.mean((projected - np.asarray(taught["teacher/hidden"])) ** 2, axis=-1)
  mask = np.asarray(local["attention_mask"], np.float64)[:, None, :]
  np.testing.assert_allclose(float(metrics["hidden_loss"]), np.sum(errors * mask), rtol=1e-4)
  moved = nnx.to_pure_dict(new_state.params)[PROJECTION]["kernel"]
  assert not np.allclose(np.asarray(moved), before["kernel"])  # it trains

  workdir = str(tmp_path / "student")
  loop.train_and_evaluate(config, workdir)
  out = str(tmp_path / "hf")
  hf.export_finetuned(workdir, out)
  torch_model = TorchClassifier.from_pretrained(out).eval()
  assert torch_model.config.hidden_size == 16
  model, tokenizer = api.load(workdir)
  inputs = tokenizer(["a fine film"], return_tensors="np")
  with torch.no_grad():
    expected = torch_model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
  np.testing.assert_allclose(model(**inputs)["logits"], expected, atol=1e-4)


@pytest.mark.slow
def test_distillation_on_meshes_equals_one_device_and_leaves_the_teacher_unchanged(tmp_path):
  """Three train steps with soft targets, hidden states and attention distilled: the same
  losses and student on (8,1,1) and (2,2,2) as on one device; the teacher, an argument of
  the step and never differentiated, bitwise as it was."""
  teacher_dir, _ = hf_teacher(tmp_path / "teacher", "classification", 2)

  def train(shape):
    config = ff.classification_config(tmp_path, **NO_DROPOUT)
    config.distill.update(teacher=teacher_dir, hidden_weight=0.5, attention_weight=0.2)
    config.mesh.shape = dict(zip(("data", "fsdp", "tensor"), shape))
    devices = jax.devices()[: int(np.prod(shape))]
    run = build_run(config, str(tmp_path / f"run{shape}"), devices=devices)
    before = jax.device_get(run.teacher)
    state, losses = run.state, []
    with mesh_lib.activate(run.mesh, run.rules):
      for step in range(3):
        batch = mesh_lib.shard_batch(run.task.train_data.batch(step), run.mesh, run.rules)
        state, metrics = run.train_step(state, run.frozen, batch, run.teacher)
        losses.append([float(metrics[k]) for k in ("total_loss", "distill_loss", "hidden_loss")])
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(run.teacher))):
      np.testing.assert_array_equal(x, y)
    return np.array(losses), jax.device_get(nnx.to_pure_dict(state.params))

  one_losses, one_params = train((1, 1, 1))
  assert one_losses[-1, 0] < one_losses[0, 0]
  for shape in ((8, 1, 1), (2, 2, 2)):
    losses, params = train(shape)
    np.testing.assert_allclose(losses, one_losses, rtol=2e-5)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(one_params)):
      np.testing.assert_allclose(x, y, atol=2e-5)
