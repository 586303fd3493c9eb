"""Cloze prompts: rendering, truncation, errors, MLM logits at [MASK], k-shot and zero-shot."""

import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import finetune as ff

from configs.finetune import sst2_prompt
from data import classification, cloze
from data import tokenizer as tokenizer_lib
from data.classification import TextExample
from model.config import BertConfig
from model.heads import BertForPreTraining
from train import loop, tasks
from train.losses import ClozeObjective
from train.tasks import cloze as cloze_task
from train.writers import read_metrics

TEMPLATE = "{sentence} then saw [MASK] ."
VERBALIZER = ("bad", "good")  # the fixture's label 0 says 'bad', label 1 'good'


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tokenizer_lib.load_tokenizer(ff.write_vocab(tmp_path_factory.mktemp("vocab") / "v.txt"))


def example(text, label="1", text_b=None):
  return TextExample(text, text_b, label, "dev.tsv:7")


def tokens(tokenizer, arrays, row=0):
  ids = arrays["input_ids"][row][arrays["attention_mask"][row] == 1]
  return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_template_renders_the_text_around_one_mask(tokenizer):
  arrays, stats = cloze.encode_cloze(
    [example("The cat sat."), example("A dog ran.", "0")],
    ["sentence"],
    TEMPLATE,
    tokenizer,
    16,
    ["0", "1"],
  )
  assert tokens(tokenizer, arrays) == [
    "[CLS]",
    "the",
    "cat",
    "sat",
    ".",
    "then",
    "saw",
    "[MASK]",
    ".",
    "[SEP]",
  ]
  assert arrays["mask_position"].tolist() == [7, 7]
  assert arrays["input_ids"][0, 7] == tokenizer.mask_token_id
  assert arrays["label"].tolist() == [1, 0] and arrays["weight"].tolist() == [1.0, 1.0]
  assert not arrays["token_type_ids"].any() and arrays["input_ids"].shape == (2, 16)
  assert stats == {"examples": 2, "truncated": 0}


def test_a_pair_template_fills_both_columns(tokenizer):
  arrays, _ = cloze.encode_cloze(
    [example("a cat", text_b="a dog")],
    ["s1", "s2"],
    "{s1} ? [MASK] , {s2}",
    tokenizer,
    16,
    ["0", "1"],
  )
  assert tokens(tokenizer, arrays) == ["[CLS]", "a", "cat", "?", "[MASK]", ",", "a", "dog", "[SEP]"]
  assert arrays["mask_position"].tolist() == [4]


def test_truncation_cuts_the_text_never_the_template_or_mask(tokenizer):
  long = "the big red cat sat on a small tree and then ran."
  arrays, stats = cloze.encode_cloze(
    [example(long)], ["sentence"], TEMPLATE, tokenizer, 10, ["0", "1"]
  )
  # 6 tokens go to [CLS], [SEP] and the template: 4 are left for the text
  assert tokens(tokenizer, arrays) == [
    "[CLS]",
    "the",
    "big",
    "red",
    "cat",
    "then",
    "saw",
    "[MASK]",
    ".",
    "[SEP]",
  ]
  assert arrays["mask_position"].tolist() == [7] and stats["truncated"] == 1
  pair, _ = cloze.encode_cloze(
    [example("a cat", text_b="the big red dog ran on")],
    ["a", "b"],
    "{a} [MASK] {b}",
    tokenizer,
    9,
    ["0", "1"],
  )
  assert tokens(tokenizer, pair) == [
    "[CLS]",
    "a",
    "cat",
    "[MASK]",
    "the",
    "big",
    "red",
    "dog",
    "[SEP]",
  ]  # the longer text lost its end
  with pytest.raises(
    ValueError,
    match=r"data.template='\{sentence\} then saw \[MASK\] \.' "
    r"takes 6 tokens .* max_seq_length=6 leaves no room for the text",
  ):
    cloze.encode_cloze([example(long)], ["sentence"], TEMPLATE, tokenizer, 6, ["0", "1"])


@pytest.mark.parametrize(
  "template,message",
  [
    ("{sentence} it was good .", r"data.template='\{sentence\} it was good \.' has 0 \[MASK\]"),
    ("[MASK] {sentence} [MASK]", r"data.template='\[MASK\] \{sentence\} \[MASK\]' has 2 \[MASK\]"),
    ("{text} [MASK]", r"placeholder \{text\} is not a text column; the columns are \['sentence'\]"),
    ("it was [MASK] .", r"data.template='it was \[MASK\] \.' has no placeholder for the text"),
  ],
)
def test_bad_templates_are_named(template, message):
  with pytest.raises(ValueError, match=message):
    cloze.parse_template(template, ["sentence"])


def test_verbalizer_gives_one_vocab_id_per_label(tokenizer):
  ids = cloze.verbalizer_token_ids(VERBALIZER, ["0", "1"], tokenizer)
  assert tokenizer.convert_ids_to_tokens(ids) == ["bad", "good"]
  assert cloze.verbalizer_token_ids({"1": "good", "0": "bad"}, ["0", "1"], tokenizer) == ids


@pytest.mark.parametrize(
  "verbalizer,message",
  [
    (
      ("bad", "trees"),
      (
        r"label '1' -> word 'trees' must be a single token of the vocab, but "
        r"it tokenises as \['tree', '##s'\]"
      ),
    ),
    (("bad", "great"), r"label '1' -> word 'great' .* tokenises as \['\[UNK\]'\]"),
    (
      {"0": "bad", "2": "good"},
      (
        r"data.verbalizer names label '2', which is not one of the "
        r"labels \['0', '1'\]"
      ),
    ),
    ({"0": "bad"}, r"data.verbalizer has no word for label '1'"),
    (("bad",), r"data.verbalizer has 1 words \['bad'\] for 2 labels \['0', '1'\]"),
    (("good", "Good"), r"gives two labels the same token"),
  ],
)
def test_bad_verbalizers_are_named(tokenizer, verbalizer, message):
  with pytest.raises(ValueError, match=message):
    cloze.verbalizer_token_ids(verbalizer, ["0", "1"], tokenizer)


def test_an_unknown_label_in_the_data_is_named_with_its_line(tokenizer):
  with pytest.raises(ValueError, match=r"dev.tsv:7: unknown label '2'"):
    cloze.encode_cloze([example("a cat", "2")], ["sentence"], TEMPLATE, tokenizer, 16, ["0", "1"])
  with pytest.raises(ValueError, match=r"dev.tsv:7: unknown label '2'"):
    classification.first_k_per_class([example("a cat", "2")], ["0", "1"], 1, 0)


def test_k_shot_takes_the_first_k_of_each_class_by_seed():
  examples = [TextExample(f"s{i}", None, str(i % 3 == 0), f"f:{i}") for i in range(30)]
  chosen = classification.first_k_per_class(examples, ["False", "True"], 4, seed=0)
  assert sorted(e.label for e in chosen) == ["False"] * 4 + ["True"] * 4
  assert chosen == classification.first_k_per_class(examples, ["False", "True"], 4, seed=0)
  assert chosen != classification.first_k_per_class(examples, ["False", "True"], 4, seed=1)
  with pytest.raises(
    ValueError,
    match=r"train_examples_per_class=11, but the training data has "
    r"only \{'True': 10\} examples",
  ):
    classification.first_k_per_class(examples, ["False", "True"], 11, seed=0)


@pytest.mark.slow
def test_class_logits_are_the_mlm_logits_at_the_mask_for_the_verbalizer_ids():
  config = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
  )
  model = BertForPreTraining(config, nnx.Rngs(3))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 50, (4, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  batch = {
    "input_ids": ids,
    "token_type_ids": np.zeros_like(ids),
    "attention_mask": mask,
    "mask_position": np.array([3, 8, 0, 11], np.int32),
    "label": np.array([0, 1, 2, 1], np.int32),
    "weight": np.ones(4, np.float32),
  }
  verbalizer_ids = [7, 42, 13]
  objective = ClozeObjective(verbalizer_ids)
  logits = np.asarray(objective.outputs(model, batch, None)["logits"])
  every_position = np.asarray(model(ids, batch["token_type_ids"], mask)["mlm_logits"])
  expected = every_position[np.arange(4), batch["mask_position"]][:, verbalizer_ids]
  assert logits.shape == (4, 3)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  _, sums = objective(model, batch, None, objective.normalizers(batch))
  log_probs = expected - np.log(np.exp(expected).sum(-1, keepdims=True))
  assert float(sums["loss"]) == pytest.approx(
    -log_probs[np.arange(4), batch["label"]].sum(), rel=1e-5
  )
  assert objective.metric_names == ("loss", "accuracy")


def cloze_config(tmp_path, **overrides):
  c = ff.tiny_config("cloze", tmp_path)
  c.data.update(
    train_path=ff.write_tsv(tmp_path / "train.tsv", ff.sentiment_rows(64, 0)),
    eval_path=ff.write_tsv(tmp_path / "dev.tsv", ff.sentiment_rows(20, 1)),
    labels=("0", "1"),
    template=TEMPLATE,
    verbalizer=VERBALIZER,
    train_examples_per_class=8,
  )
  c.early_stopping.metric = ""
  c.epochs = 20
  c.optimizer.lr = 1e-2
  return ff.set_keys(c, overrides)


@pytest.fixture(scope="module")
def k_shot_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("cloze")
  workdir = str(tmp_path / "run")
  return workdir, loop.train_and_evaluate(cloze_config(tmp_path), workdir)


@pytest.mark.slow
def test_k_shot_trains_on_k_per_class_and_its_loss_falls(k_shot_run):
  workdir, final = k_shot_run
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["step"] == final["step"] == 40  # 16 examples, batch 8, 20 epochs
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  assert {"loss", "accuracy"} <= set(final)


@pytest.mark.slow  # its fixture trains a run
def test_zero_shot_evaluates_without_a_training_step(k_shot_run, tmp_path):
  """From the k-shot run's weights (MLM head included), zero-shot scores what it scored."""
  trained, trained_final = k_shot_run
  config = cloze_config(
    tmp_path, **{"epochs": 0, "data.train_path": "", "init.checkpoint": trained}
  )
  workdir = str(tmp_path / "zero")
  final = loop.train_and_evaluate(config, workdir)
  assert final["step"] == 0
  records = [r for r in read_metrics(workdir) if r["split"] in ("train", "eval")]
  assert [(r["split"], r["step"]) for r in records] == [("eval", 0)]
  assert final["accuracy"] == pytest.approx(trained_final["accuracy"])
  assert final["loss"] == pytest.approx(trained_final["loss"], rel=1e-5)


def test_training_needs_train_data_unless_epochs_is_zero(tmp_path):
  with pytest.raises(ValueError, match="no train data: set data.train_path .* or epochs=0"):
    tasks.build_task(cloze_config(tmp_path, **{"data.train_path": ""}), str(tmp_path))
  task = tasks.build_task(
    cloze_config(tmp_path, **{"data.train_path": "", "epochs": 0}), str(tmp_path)
  )
  assert task.train_data is None and task.labels == ["0", "1"]


def test_peft_is_refused_rather_than_ignored(tmp_path):
  config = cloze_config(tmp_path)
  config.peft = ml_collections.ConfigDict({"method": "lora"})
  with pytest.raises(ValueError, match="peft.method='lora': task='cloze' trains every parameter"):
    tasks.build_task(config, str(tmp_path))


def test_sst2_prompt_configs():
  zero = sst2_prompt.get_config("zero,minilm")
  assert (zero.epochs, zero.optimizer.total_steps, zero.model.hidden_size) == (0, 0, 384)
  shot = sst2_prompt.get_config("16shot")
  assert (shot.data.train_examples_per_class, shot.optimizer.lr) == (16, 1e-5)
  with pytest.raises(ValueError, match="unknown mode 'few'"):
    sst2_prompt.get_config("few,base")


def test_calibration_divides_by_the_content_free_label_probabilities():
  """Hand case: softmax([0, 1]) = (.269, .731) over p_cf = softmax([0, 2]) = (.119, .881)
  gives (2.26, 0.83): label 0, where the raw argmax says 1; softmax([0, 3]) = (.047, .953)
  gives (0.40, 1.08) and stays 1. Two content-free rows average in probability space."""
  logits = np.array([[0.0, 1.0], [0.0, 3.0]])
  assert cloze_task.calibrated_predictions(logits, np.zeros((0, 2))).tolist() == [1, 1]
  assert cloze_task.calibrated_predictions(logits, np.array([[0.0, 2.0]])).tolist() == [0, 1]
  balanced = np.array([[0.0, 2.0], [0.0, -2.0]])  # p_cf (.5, .5): the raw argmax
  assert cloze_task.calibrated_predictions(logits, balanced).tolist() == [1, 1]


def test_content_free_rows_ride_at_weight_zero_and_calibrate_the_score(tmp_path):
  config = cloze_config(tmp_path, **{"data.calibration_texts": ("N/A", "[MASK]")})
  task = tasks.build_task(config, str(tmp_path))
  rows = {}
  for batch in task.eval_batches:
    for i, row in enumerate(batch["row"]):
      rows[int(row)] = {key: value[i] for key, value in batch.items()}
  assert [rows[r]["weight"] for r in (19, 20, 21)] == [1.0, 0.0, 0.0]
  tokenizer = task.tokenizer
  ids = rows[21]["input_ids"][rows[21]["attention_mask"] == 1].tolist()
  assert tokenizer.convert_ids_to_tokens(ids) == [
    "[CLS]", "[MASK]", "then", "saw", "[MASK]", ".", "[SEP]"
  ]  # fmt: skip
  assert rows[21]["mask_position"] == 4  # the template's [MASK], not the text's
  gold = np.array([rows[r]["label"] for r in range(20)])
  biased = np.tile([0.0, 1.0], (22, 1))  # every text says label 1 ...
  biased[20:] = [0.0, 2.0]  # ... and content-free text says it more
  assert task.score("eval", {"logits": biased})["accuracy"] == pytest.approx((gold == 0).mean())
  raw = tasks.build_task(cloze_config(tmp_path), str(tmp_path))
  assert raw.score("eval", {"logits": biased[:20]})["accuracy"] == pytest.approx(gold.mean())
  assert 0 < gold.mean() < 1


def test_a_calibration_text_without_tokens_is_named(tmp_path):
  config = cloze_config(tmp_path, **{"data.calibration_texts": ("N/A", " ")})
  with pytest.raises(ValueError, match=r"data.calibration_texts\[1\]: the text has no tokens"):
    tasks.build_task(config, str(tmp_path))


def test_the_signal_benchmarks_calibrated_gap_decides_as_calibrated_predictions():
  from benchmarks.cloze_signal import log_gap

  rng = np.random.default_rng(0)
  pair, free = rng.normal(size=(200, 2)) * 3, rng.normal(size=(2, 2)) * 3 + [2.0, 0.0]
  np.testing.assert_array_equal(log_gap(pair) > 0, pair.argmax(-1) == 1)
  np.testing.assert_array_equal(
    log_gap(pair, free) > 0, cloze_task.calibrated_predictions(pair, free) == 1
  )
  assert (
    cloze_task.calibrated_predictions(pair, free) != pair.argmax(-1)
  ).any()  # calibration moved some
