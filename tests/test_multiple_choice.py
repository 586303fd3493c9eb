"""Multiple choice (train/tasks/multiple_choice.py): SWAG files, parity, training, export."""

import json
import os

import numpy as np
import pytest
import torch
from flax import nnx
from helpers import finetune as ff
from helpers import random_batch, set_keys, tiny_hf_config

from data import multiple_choice
from model.config import BertConfig
from model.convert import hf_to_params, merge_trees
from train import api, hf, loop, predict
from train.tasks.multiple_choice import BertForMultipleChoice
from train.writers import read_metrics

SWAG_HEADER = (
  ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label"
)


def choice_rows(n, seed):
  """(sent1, sent2, four endings, label): the right ending says 'good', the others 'bad'."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(4))
    places = list(rng.choice(ff.PLACES, 4))
    endings = [f"{p} {ff.SENTIMENT[0 if i == label else 1]}" for i, p in enumerate(places)]
    filler = " ".join(rng.choice(ff.FILLER, 2))
    rows.append((f"{rng.choice(ff.PEOPLE)} went to rome, {filler}.", "then", endings, label))
  return rows


def write_swag(path, rows, labelled=True):
  lines = [SWAG_HEADER if labelled else SWAG_HEADER.rsplit(",", 1)[0]]
  for i, (sent1, sent2, endings, label) in enumerate(rows):
    fields = [str(i), "v", str(i), f'"{sent1} {sent2}"', f'"{sent1}"', sent2, "gold"]
    fields += [f"{ending} saw" for ending in endings] + ([str(label)] if labelled else [])
    lines.append(",".join(fields))
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def swag_config(tmp_path, **overrides):
  c = ff.tiny_config("multiple_choice", tmp_path)
  c.data.update(
    train_path=write_swag(tmp_path / "train.csv", choice_rows(96, 0)),
    eval_path=write_swag(tmp_path / "val.csv", choice_rows(24, 1)),
    max_seq_length=24,
  )
  c.epochs = 4
  return set_keys(c, overrides)


def test_swag_csv_reads_quoted_fields_and_names_bad_rows(tmp_path):
  path = write_swag(tmp_path / "val.csv", choice_rows(3, 0))
  examples = multiple_choice.read_swag_csv(path)
  assert len(examples) == 3 and all(len(e.endings) == 4 for e in examples)
  first = choice_rows(3, 0)[0]
  assert examples[0].context == first[0]  # the comma inside the quotes stays in the field
  assert examples[0].endings[first[3]] == f"then {first[2][first[3]]} saw"
  assert "good" in examples[0].endings[first[3]]
  assert examples[0].label == first[3] and examples[0].origin == f"{path}:2"
  text = open(path).read().splitlines()
  bad = tmp_path / "bad.csv"
  bad.write_text("\n".join([*text[:3], text[3].rsplit(",", 1)[0] + ",7"]) + "\n")
  with pytest.raises(ValueError, match=rf"{bad}:4: label '7' is not the index of one of the 4"):
    multiple_choice.read_swag_csv(str(bad))
  with pytest.raises(ValueError, match=rf"{bad}:1: no column 'context'"):
    multiple_choice.read_swag_csv(str(bad), context_column="context")
  unlabelled = multiple_choice.read_swag_csv(
    write_swag(tmp_path / "test.csv", choice_rows(2, 0), labelled=False)
  )
  assert [e.label for e in unlabelled] == [None, None]


def test_logits_match_transformers_bert_for_multiple_choice():
  from transformers import BertForMultipleChoice as TorchMultipleChoice

  torch.manual_seed(0)
  torch_model = TorchMultipleChoice(tiny_hf_config()).eval()
  config = BertConfig.from_hf_dict(torch_model.config.to_dict())
  model = BertForMultipleChoice(config, nnx.Rngs(0))
  tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  tree, _ = hf_to_params(tensors, config)
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, merge_trees(nnx.to_pure_dict(params), tree))
  nnx.update(model, params)
  batch = random_batch(0, 6, 10, config.vocab_size)
  ids, types_, mask = (x.reshape(3, 2, 10) for x in batch)  # 3 examples of 2 choices
  with torch.no_grad():
    expected = torch_model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      token_type_ids=torch.tensor(types_, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).logits.numpy()
  got = np.asarray(model(ids, types_, mask))
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("swag")
  config = swag_config(tmp_path)
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  return config, workdir, final, tmp_path


@pytest.mark.slow
def test_training_learns_to_pick_the_ending(run):
  config, workdir, final, _ = run
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  assert final["best"]["eval"]["accuracy"] > 0.9  # chance is 0.25
  assert json.load(open(os.path.join(workdir, "labels.json"))) == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_predict_and_merged_export_agree_with_transformers(run):
  from transformers import BertForMultipleChoice as TorchMultipleChoice

  config, workdir, final, tmp_path = run
  examples = multiple_choice.read_swag_csv(config.data.eval_path)
  inputs = [(e.context, *e.endings) for e in examples]
  predictor = predict.Predictor(workdir)
  results = predictor(inputs)
  accuracy = np.mean([r["choice"] == e.label for r, e in zip(results, examples)])
  assert accuracy == pytest.approx(final["best"]["eval"]["accuracy"])
  assert results[0]["ending"] == examples[0].endings[results[0]["choice"]]
  with pytest.raises(ValueError, match="input 1: a multiple-choice input is a context and 4"):
    predictor([("a context", "one ending")])

  out = str(tmp_path / "hf")
  hf.export_finetuned(workdir, out)
  assert json.load(open(os.path.join(out, "config.json")))["architectures"] == [
    "BertForMultipleChoice"
  ]
  torch_model = TorchMultipleChoice.from_pretrained(out).eval()
  arrays, _ = multiple_choice.encode_choices(
    examples[:8], predictor.tokenizer, config.data.max_seq_length
  )
  with torch.no_grad():
    expected = torch_model(
      **{k: torch.tensor(arrays[k], dtype=torch.long) for k in ("input_ids", "token_type_ids")},
      attention_mask=torch.tensor(arrays["attention_mask"], dtype=torch.long),
    ).logits.numpy()
  np.testing.assert_allclose(predictor.outputs(arrays)["logits"], expected, atol=1e-4)
  # train.api loads the workdir and the export as the task's head model (from the registry)
  feed = {k: arrays[k][:8] for k in ("input_ids", "token_type_ids", "attention_mask")}
  for source in (workdir, out):
    model, _ = api.load(source)
    assert model.head == "multiple_choice"
    np.testing.assert_allclose(model(**feed)["logits"], expected, atol=1e-4)
  with pytest.raises(ValueError, match="HF PEFT has no task type for task='multiple_choice'"):
    hf.export_finetuned(workdir, str(tmp_path / "adapter"), export_format="peft")


def test_the_swag_config_builds_a_four_choice_run_without_data():
  from configs.finetune import swag
  from train.run import build_run

  run = build_run(swag.get_config("tiny"), abstract=True)
  assert run.batch_shapes["input_ids"].shape == (16, 4, 128)  # batch 16, 4 endings
  assert run.labels == ["0", "1", "2", "3"]
  assert run.state.params["classifier"]["kernel"].shape == (128, 1)  # one score per choice


def test_abstract_batch_is_the_real_batch(tmp_path):
  from train import mesh as mesh_lib
  from train.run import build_run

  run = build_run(swag_config(tmp_path, **{"data.bucket_lengths": "none"}), str(tmp_path / "run"))
  batch = mesh_lib.shard_batch(run.task.train_data.batch(0), run.mesh, run.rules)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    k: (v.shape, v.dtype) for k, v in run.batch_shapes.items()
  }
  assert batch["input_ids"].shape == (8, 4, 24) and run.tokens_per_step == 8 * 4 * 24
