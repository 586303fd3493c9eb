"""train/run.build_run: one builder for the loop, train.aot, train.continual and the benchmarks."""

import jax
import numpy as np
import pytest
from helpers import assert_bitwise_equal
from helpers import finetune as ff
from helpers import pretraining as pf

from train import mesh as mesh_lib
from train.run import build_run


def tiny_configs(tmp_path):
  """The tests' tiny config of every task, each in a folder of its own (vocabs differ)."""
  folders = {}
  for name in ("pretraining", "classification", "token_classification", "qa", "cloze"):
    folders[name] = tmp_path / name
    folders[name].mkdir()
  cloze = ff.tiny_config("cloze", folders["cloze"])
  cloze.data.update(
    train_path=ff.write_tsv(folders["cloze"] / "train.tsv", ff.sentiment_rows(16, 0)),
    eval_path=ff.write_tsv(folders["cloze"] / "dev.tsv", ff.sentiment_rows(8, 1)),
    labels=("0", "1"),
    template="{sentence} it was [MASK] .",
    verbalizer=("bad", "good"),
  )
  corpus = pf.write_corpus(folders["pretraining"] / "corpus.txt")
  return {
    "pretraining": pf.tiny_config(folders["pretraining"], **{"data.paths": corpus}),
    "classification": ff.classification_config(folders["classification"]),
    "token_classification": ff.ner_config(folders["token_classification"]),
    "question_answering": ff.squad_config(folders["qa"]),
    "cloze": cloze,
  }


def test_every_tasks_abstract_batch_is_its_real_batch(tmp_path):
  """example_shapes (what train.aot compiles against) says what the task's data gives.

  At max_seq_length: the longest bucket, which is what a TPU's memory must hold.
  """
  for name, config in tiny_configs(tmp_path).items():
    if "bucket_lengths" in config.data:
      config.data.bucket_lengths = "none"
    run = build_run(config, str(tmp_path / name / "run"))
    batch = mesh_lib.shard_batch(run.task.train_data.batch(0), run.mesh, run.rules)
    got = {k: (v.shape, v.dtype) for k, v in batch.items()}
    want = {k: (v.shape, v.dtype) for k, v in run.batch_shapes.items()}
    assert got == want, name


def test_a_run_without_data_starts_from_the_same_weights(tmp_path):
  config = ff.classification_config(tmp_path)
  with_data = build_run(config, str(tmp_path / "a"))
  without = build_run(config, with_data=False)
  assert without.task is None and without.labels == ["0", "1"]
  assert_bitwise_equal(with_data.state.params, without.state.params)


@pytest.mark.parametrize("method", ["none", "lora", "adalora"])
def test_an_abstract_run_lowers_and_compiles_without_data(tmp_path, method):
  config = ff.classification_config(tmp_path, **{"peft.method": method, "data.train_path": ""})
  run = build_run(config, abstract=True)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(run.state))
  with mesh_lib.activate(run.mesh, run.rules):
    compiled = run.train_step.lower(run.state, run.frozen, run.batch_shapes).compile()
  assert compiled.memory_analysis().argument_size_in_bytes > 0
  trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.state.params))
  frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.frozen))
  assert (frozen == 0) == (method == "none") and trainable > 0


def test_an_abstract_cloze_run_is_refused_with_the_reason(tmp_path):
  with pytest.raises(ValueError, match="task='cloze' builds its objective from its data"):
    build_run(tiny_configs(tmp_path)["cloze"], abstract=True)


def test_a_token_budget_sets_the_steps_and_warmup_ratio_its_warmup(tmp_path):
  from train.errors import UserError
  from train.run import schedule_steps

  config = pf.tiny_config(tmp_path)  # batch 8 x 32 tokens = 256 a step
  config.optimizer.update(total_steps=0, total_tokens=2561, warmup_steps=0, warmup_ratio=0.1)
  assert schedule_steps(config, None) == (11, 1)  # ceil(2561 / 256); round(1.1)
  config.optimizer.total_steps = 5
  with pytest.raises(UserError, match="optimizer.total_steps=5 and optimizer.total_tokens=2561"):
    schedule_steps(config, None)
