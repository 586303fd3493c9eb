"""Knowledge distillation (Hinton et al. 2015) as an objective of the one train step.

The teacher, a fine-tuned workdir of this codebase or an HF directory holding the
task's head, enters the jitted train step as frozen arrays sharded on the run's
mesh by the same logical rules as the student. The step computes its logits on
the batch, outside the student's gradient, and the student minimises

  hard_weight * task loss + soft_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

each a mean over the same rows as the task loss: examples for classification,
labelled tokens for NER, both span ends for QA (their mean). T^2 keeps the soft
gradients at the hard loss's scale as T changes (Hinton et al., section 2). The
student is an ordinary model of its task: it evaluates, predicts and exports like
any fine-tuned workdir, with no teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from train.errors import UserError

TEACHER = "teacher/"  # prefix of the teacher's outputs in a train batch


def soft_target_loss_sum(student_logits, teacher_logits, weights, temperature: float):
  """T^2 * KL(teacher_T || student_T) over the last axis, weighted and summed over rows."""
  t = float(temperature)
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
  return jnp.sum(kl * weights) * t * t


def hidden_mse_sum(student_hidden, teacher_hidden, attention_mask):
  """Squared error of hidden states, averaged over the hidden axis, summed over the real
  tokens of every mapped layer; hidden: [batch, layers, length, hidden]."""
  error = jnp.mean(
    jnp.square(student_hidden.astype(jnp.float32) - teacher_hidden.astype(jnp.float32)), axis=-1
  )
  return jnp.sum(error * attention_mask.astype(jnp.float32)[:, None, :])


def attention_kl_sum(student_probs, teacher_probs, attention_mask):
  """KL(teacher || student) of each attention distribution (a query row of a head), summed
  over the real query tokens, heads and mapped layers; probs: [batch, layers, heads, q, k].
  Masked keys have probability 0 on both sides and add nothing."""
  t = teacher_probs.astype(jnp.float32)
  s = student_probs.astype(jnp.float32)
  tiny = jnp.finfo(jnp.float32).tiny
  kl = jnp.sum(
    jnp.where(t > 0, t * (jnp.log(jnp.maximum(t, tiny)) - jnp.log(jnp.maximum(s, tiny))), 0.0),
    axis=-1,
  )
  return jnp.sum(kl * attention_mask.astype(jnp.float32)[:, None, None, :])


def uniform_layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
  """The teacher layer each student layer learns from, evenly spaced and ending at the
  last (TinyBERT's uniform strategy): 3 of 6 -> (1, 3, 5)."""
  return tuple((i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers))


@dataclasses.dataclass
class Teacher:
  """The teacher's module structure and its parameters (sharded arrays, or
  ShapeDtypeStructs with shardings in an abstract run)."""

  graphdef: Any
  params: Any
  layer_map: tuple[int, ...] = ()  # the teacher layer of each student layer (hidden, attention)
  num_heads: int = 0
  hidden_size: int = 0


# The student's learned map from its width to the teacher's, when hidden states are distilled
# between different widths (TinyBERT's W_h). It trains with the student and exists only for
# distillation: reading a fine-tuned workdir (predict, export, api.load) leaves it out.
PROJECTION = "distill_projection"


def with_projection(factory, student_width: int, teacher_width: int, std: float):
  """The student's model factory, its models carrying PROJECTION."""
  from model.bert import Dense

  def make(rngs):
    model = factory(rngs)
    shape = (student_width, teacher_width)
    projection = Dense("blte,ef->bltf", shape, ("embed", None), (None,), rngs, std)
    setattr(model, PROJECTION, projection)
    return model

  return make


class DistillationObjective:
  """The task's objective with the teacher's soft targets added to its training loss.

  Evaluation is the task's own (`outputs`, `loss_and_sums`, `finalize` delegate), so
  dev scores are the student's alone; training sums add `distill_loss`.
  """

  def __init__(
    self,
    task_objective,
    teacher_graphdef,
    temperature,
    soft_weight,
    hard_weight,
    hidden_weight=0.0,
    layer_map=(),
    attention_weight=0.0,
    num_heads=0,
  ):
    regression = getattr(task_objective, "regression", False)
    if not hasattr(task_objective, "soft_targets") or regression:
      kind = "regression" if regression else type(task_objective).__name__
      raise UserError(f"distill.teacher: {kind} has no class distribution to distil")
    self.task = task_objective
    self.teacher_graphdef = teacher_graphdef
    self.temperature = float(temperature)
    self.soft_weight = float(soft_weight)
    self.hard_weight = float(hard_weight)
    self.hidden_weight = float(hidden_weight)
    self.attention_weight = float(attention_weight)
    self.num_heads = int(num_heads)  # of teacher and student alike, for attention rows
    self.layer_map = tuple(int(i) for i in layer_map)  # the teacher layer of each student one
    self.metric_names = tuple(task_objective.metric_names)
    self.token_outputs = tuple(task_objective.token_outputs)

  def _layer_terms(self):
    """(name, weight, encoder attribute, loss-sum function, rows per real token and student
    layer) of each layer-wise term this objective has."""
    terms = (
      ("hidden", self.hidden_weight, "hidden_states", hidden_mse_sum, 1),
      ("attention", self.attention_weight, "attention_probs", attention_kl_sum, self.num_heads),
    )
    return [term for term in terms if term[1]]

  def _rows(self, batch, per_token: int):
    """Real tokens x student layers x per_token: what a layer-wise loss sum is a sum over."""
    tokens = jnp.sum(batch["attention_mask"].astype(jnp.float32))
    return tokens * len(self.layer_map) * per_token

  def normalizers(self, batch):
    norm = self.task.normalizers(batch)
    for name, _, _, _, per_token in self._layer_terms():  # of the whole batch
      norm[f"{name}_rows"] = jnp.maximum(self._rows(batch, per_token), 1.0)
    return norm

  def outputs(self, model, batch, dropout_rng) -> dict:
    return self.task.outputs(model, batch, dropout_rng)

  def loss_and_sums(self, outputs, batch, norm):
    return self.task.loss_and_sums(outputs, batch, norm)

  def finalize(self, sums: Mapping[str, Any]) -> dict[str, float]:
    metrics = self.task.finalize(sums)
    if "distill_loss" in sums:
      metrics["distill_loss"] = float(sums["distill_loss"]) / max(float(sums["count"]), 1.0)
    for name in ("hidden", "attention"):
      if f"{name}_loss" in sums:
        count = max(float(sums[f"{name}_count"]), 1.0)
        metrics[f"{name}_loss"] = float(sums[f"{name}_loss"]) / count
    return metrics

  def with_teacher_outputs(self, teacher_params, batch) -> dict:
    """The batch plus the teacher's logits (no dropout, no gradient) under TEACHER keys."""
    teacher = nnx.merge(self.teacher_graphdef, teacher_params)
    self._keep(teacher)
    outputs = self.task.outputs(teacher, batch, None)
    names = [name for name, _ in self.task.soft_targets(batch)]
    out = {TEACHER + n: outputs[n] for n in names}
    mapped = jnp.asarray(self.layer_map)
    for name, _, attribute, _, _ in self._layer_terms():
      kept = getattr(teacher.bert.encoder, attribute)[...]
      out[TEACHER + name] = self._batch_major(kept[mapped])
    return dict(batch, **jax.lax.stop_gradient(out))

  def _keep(self, model):
    """Ask the model's encoder for the layer outputs this objective reads."""
    model.bert.encoder.keep_hidden_states = bool(self.hidden_weight)
    model.bert.encoder.keep_attention_probs = bool(self.attention_weight)

  @staticmethod
  def _batch_major(hidden):
    """[layers, batch, length, hidden] -> [batch, layers, length, hidden]: a batch array."""
    return jnp.swapaxes(hidden, 0, 1)

  def __call__(self, model, batch, dropout_rng, norm):
    self._keep(model)
    outputs = self.task.outputs(model, batch, dropout_rng)
    hard, sums = self.task.loss_and_sums(outputs, batch, norm)
    soft_sum = sum(
      soft_target_loss_sum(outputs[name], batch[TEACHER + name], weights, self.temperature)
      for name, weights in self.task.soft_targets(batch)
    )
    soft = soft_sum / norm[self.task.soft_target_normalizer]
    loss = self.hard_weight * hard + self.soft_weight * soft
    sums = dict(sums, distill_loss=soft_sum)
    for name, weight, attribute, loss_sum, per_token in self._layer_terms():
      student = self._batch_major(getattr(model.bert.encoder, attribute)[...])
      if name == "hidden" and hasattr(model, PROJECTION):  # to the teacher's width
        student = getattr(model, PROJECTION)(student)
      term = loss_sum(student, batch[TEACHER + name], batch["attention_mask"])
      loss = loss + weight * term / norm[f"{name}_rows"]
      sums[f"{name}_loss"] = term
      sums[f"{name}_count"] = self._rows(batch, per_token)
    return loss, sums


def _teacher_labels(source: str) -> tuple[list[str] | None, int | None]:
  """(label names of our workdir, or None; number of labels an HF config.json names)."""
  import json
  import os

  ours = os.path.join(source, "labels.json")
  if os.path.isfile(ours):
    with open(ours) as f:
      names = json.load(f)
    return names, len(names) if names else None
  hf_config = os.path.join(source, "config.json")
  if os.path.isfile(hf_config):
    with open(hf_config) as f:
      id2label = json.load(f).get("id2label") or {}
    return None, len(id2label) or None
  return None, None


def load_teacher(config, labels, model_config, mesh, rules, abstract: bool = False):
  """The run's Teacher from config.distill.teacher, or None when no teacher is named.

  Refused in one line, naming distill.teacher: a path that is no directory, a model of
  another task, another vocabulary size, other labels (names of our workdirs, the count
  of an HF directory's id2label).
  """
  import os

  from train import api
  from train.state import param_shardings

  source = config.get("distill", {}).get("teacher", "")
  if not source:
    return None
  where = f"distill.teacher={source}"
  d = config.distill
  if not d.temperature > 0:
    raise UserError(f"distill.temperature={d.temperature:g}: must be > 0")
  for key in ("soft_weight", "hard_weight", "hidden_weight", "attention_weight"):
    if not d[key] >= 0:
      raise UserError(f"distill.{key}={d[key]:g}: must be >= 0")
  from train import tasks

  if not tasks.get(config.task).distills:
    distilled = [name for name in tasks.MODULES if tasks.get(name).distills]
    raise UserError(f"{where}: task={config.task!r} cannot be distilled (tasks: {distilled})")
  if not os.path.isdir(source):
    raise UserError(f"{where}: no such directory (a fine-tuned workdir or an HF directory)")
  model, _ = api.load(source)
  if model.head != config.task:
    raise UserError(f"{where} holds a {model.head!r} model; task={config.task!r} needs its own")
  if model.config.vocab_size != model_config.vocab_size:
    raise UserError(
      f"{where}: vocab_size {model.config.vocab_size} against the student's "
      f"{model_config.vocab_size}; teacher and student must read the same token ids"
    )
  names, count = _teacher_labels(source)
  if labels and names is not None and list(names) != list(labels):
    raise UserError(f"{where}: labels {names} against the task's {list(labels)}")
  if labels and count is not None and count != len(labels):
    raise UserError(f"{where}: {count} labels against the task's {len(labels)}")
  by_layer = d.hidden_weight or d.attention_weight
  layer_map = _layer_map(config, model.config, model_config) if by_layer else ()
  graphdef, params = nnx.split(model.module)
  shapes = jax.eval_shape(lambda: params)
  shardings = param_shardings(shapes, mesh, rules)
  if abstract:
    params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
  else:
    params = jax.device_put(params, shardings)
  size = sum(int(x.size) for x in jax.tree.leaves(shapes))
  logging.info(
    "distilling from %s (%s parameters, %d layers): T=%g, soft %g + hard %g, hidden %g %s",
    source,
    f"{size:,}",
    model.config.num_hidden_layers,
    d.temperature,
    d.soft_weight,
    d.hard_weight,
    d.hidden_weight,
    f"(student layers <- teacher layers {list(layer_map)})" if layer_map else "",
  )
  return Teacher(
    graphdef, params, layer_map, model.config.num_attention_heads, model.config.hidden_size
  )


def _layer_map(config, teacher_config, student_config) -> tuple[int, ...]:
  """distill.layer_map checked (or the uniform map) for hidden-state distillation."""
  d = config.distill
  where = f"distill.hidden_weight={d.hidden_weight:g}"
  heads = teacher_config.num_attention_heads, student_config.num_attention_heads
  if d.attention_weight and heads[0] != heads[1]:
    raise UserError(
      f"distill.attention_weight={d.attention_weight:g}: the teacher has {heads[0]} attention "
      f"heads, the student {heads[1]}; distributions are matched head by head"
    )
  if config.get("peft", {}).get("method") in ("prompt", "prefix"):
    raise UserError(f"{where}: prompt and prefix positions have no teacher counterpart")
  student, teacher = student_config.num_hidden_layers, teacher_config.num_hidden_layers
  layer_map = tuple(int(i) for i in d.layer_map) or uniform_layer_map(student, teacher)
  if len(layer_map) != student or not all(0 <= i < teacher for i in layer_map):
    raise UserError(
      f"distill.layer_map={list(layer_map)}: one teacher layer (0 to {teacher - 1}) for each "
      f"of the student's {student} layers"
    )
  return layer_map
