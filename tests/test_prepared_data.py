"""data.prepare (Apache Beam -> ArrayRecord shards) and training on what it writes."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import assert_bitwise_equal, saved_state, set_keys
from helpers.pretraining import tiny_config, write_corpus

from data import prepare, shards
from data import tokenizer as tokenizer_lib
from data.pretraining import MaskingConfig, PretrainingData, build_pretraining_data
from data.sampling import Prefetcher
from train import loop
from train.writers import read_metrics


def corpus_config(tmp_path, **overrides):
  """tiny_config over two corpus files (so documents come from several files)."""
  c = tiny_config(tmp_path)
  write_corpus(tmp_path / "part-1.txt", documents=60, seed=1)
  write_corpus(tmp_path / "part-2.txt", documents=60, seed=2)
  c.data.update(paths=str(tmp_path / "part-*.txt"), num_shards=3, heldout_documents=0.1)
  return set_keys(c, overrides)


def prepared_config(config, directory, **overrides):
  c = set_keys(config.copy_and_resolve_references(), {"data.source": "prepared"})
  c.data.paths = directory
  return set_keys(c, overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(config, directory) of a corpus prepared by one worker."""
  tmp = tmp_path_factory.mktemp("prepared")
  config = corpus_config(tmp)
  directory = str(tmp / "one_worker")
  prepare.prepare(config, directory, workers=1)
  return config, directory


def file_bytes(directory):
  names = sorted(n for n in os.listdir(directory) if n.endswith(".array_record"))
  return {name: open(os.path.join(directory, name), "rb").read() for name in names}


@pytest.mark.slow
def test_shards_are_the_same_with_one_and_three_workers(prepared, tmp_path):
  config, directory = prepared
  three = str(tmp_path / "three_workers")
  prepare.prepare(config, three, workers=3)
  one_files, three_files = file_bytes(directory), file_bytes(three)
  assert sorted(one_files) == sorted(three_files)
  assert {name.split("-")[0] for name in one_files} == {"train", "heldout"}
  assert one_files == three_files
  with open(os.path.join(directory, shards.MANIFEST)) as f:
    one = json.load(f)
  with open(os.path.join(three, shards.MANIFEST)) as f:
    assert json.load(f) == one


def assert_shards_are_built_in_memory(config, directory, **build_options):
  """Every train shard equals build_pretraining_data(**build_options) over its documents;
  returns the prepared rows, the tokenizer and each shard's documents."""
  manifest = shards.read_manifest(directory)
  options = prepare.Options.from_config(config)
  files = manifest["files"]
  keyed = [
    (f"{number:06d}/{index:010d}", document)
    for number, path in enumerate(files)
    for index, document in enumerate(prepare.read_documents(path))
  ]
  fraction = prepare.heldout_fraction(options.heldout_documents, len(keyed))
  tokenizer = tokenizer_lib.load_tokenizer(config.data.vocab)
  rows = shards.PreparedRows(directory, "train", manifest, tokenizer.pad_token_id)
  start, shard_documents = 0, []
  for entry in manifest["splits"]["train"]:
    shard = int(entry["file"].split("-")[1])
    documents = [d for key, d in keyed if prepare.place(key, options, fraction) == ("train", shard)]
    expected, _ = build_pretraining_data(
      documents,
      tokenizer,
      32,
      options.short_seq_prob,
      options.dupe_factor,
      (0, 0, shard),
      **build_options,
    )
    got = rows.rows(np.arange(start, start + entry["count"]))
    assert got.keys() == expected.keys()
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    start += entry["count"]
    shard_documents.append(documents)
  assert start == len(rows)
  return rows, tokenizer, shard_documents


def test_a_shard_holds_the_instances_memory_builds_from_its_documents(prepared):
  """Shard k is build_pretraining_data over its documents, in corpus order, seeded by
  (seed, split, k): the same arrays, so the same batches as the in-memory path."""
  config, directory = prepared
  rows, tokenizer, _ = assert_shards_are_built_in_memory(config, directory)
  # Batches are the in-memory ones for the same rows, masks included.
  in_memory = rows.rows(np.arange(len(rows)))
  masking = MaskingConfig.from_tokenizer(tokenizer, max_predictions=5)
  from_disk = PretrainingData(rows, 8, 0, masking)
  from_memory = PretrainingData(in_memory, 8, 0, masking)
  for step in (0, 1, from_disk.steps_per_epoch + 2):
    a, b = from_disk.batch(step), from_memory.batch(step)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_records_round_trip_with_word_starts(tmp_path):
  config = tiny_config(tmp_path)
  tokenizer = tokenizer_lib.load_tokenizer(config.data.vocab)
  documents = [[f"the cat sat on a tree {i}.", "then the dog ran quickly."] for i in range(8)]
  arrays, _ = build_pretraining_data(documents, tokenizer, 32, 0.1, 2, 0, whole_word=True)
  records = [shards.encode(arrays, row) for row in range(len(arrays["input_ids"]))]
  back = shards.decode(records, 32, tokenizer.pad_token_id, whole_word=True)
  assert back.keys() == arrays.keys()
  for key in arrays:
    np.testing.assert_array_equal(back[key], arrays[key], err_msg=key)


@pytest.mark.slow
def test_a_run_on_prepared_shards_learns_and_resumes_bitwise(prepared, tmp_path):
  config, directory = prepared
  run = prepared_config(config, directory, **{"optimizer.total_steps": 8})
  loop.train_and_evaluate(run, str(tmp_path / "straight"))
  losses = [
    r["mlm_loss"] for r in read_metrics(str(tmp_path / "straight")) if r["split"] == "train"
  ]
  assert losses[-1] < losses[0]
  stopped = prepared_config(config, directory, **{"optimizer.total_steps": 8, "stop_at_step": 3})
  loop.train_and_evaluate(stopped, str(tmp_path / "resumed"))
  assert saved_state(str(tmp_path / "resumed"))[0] == 3
  loop.train_and_evaluate(run, str(tmp_path / "resumed"))
  step_a, a = saved_state(str(tmp_path / "straight"))
  step_b, b = saved_state(str(tmp_path / "resumed"))
  assert step_a == step_b == 8
  assert_bitwise_equal(a, b)


@pytest.mark.slow
def test_a_text_run_prepares_its_corpus_in_the_workdir_once_and_resumes_on_it(prepared, tmp_path):
  """data.prepare_in_workdir: the same shards data.prepare writes, made at the first start
  and reused by the resume; the run equals one on the prepared directory, bit for bit."""
  config, directory = prepared
  steps = {"optimizer.total_steps": 8, "data.prepare_in_workdir": True}
  workdir = str(tmp_path / "auto")
  loop.train_and_evaluate(
    set_keys(config.copy_and_resolve_references(), {**steps, "stop_at_step": 3}), workdir
  )
  made = os.path.join(workdir, "data")
  assert file_bytes(made) == file_bytes(directory)
  manifest = os.path.join(made, shards.MANIFEST)
  written = os.stat(manifest).st_mtime_ns
  # The resume may name another worker count: the shards would be the same.
  resumed = set_keys(config.copy_and_resolve_references(), {**steps, "data.prepare_workers": 2})
  loop.train_and_evaluate(resumed, workdir)
  assert os.stat(manifest).st_mtime_ns == written  # reused, not prepared again
  assert os.path.isfile(os.path.join(workdir, "vocab", "vocab.txt"))
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(
    prepared_config(config, directory, **{"optimizer.total_steps": 8}), straight
  )
  step_a, a = saved_state(straight)
  step_b, b = saved_state(workdir)
  assert step_a == step_b == 8
  assert_bitwise_equal(a, b)


def test_in_memory_runs_keep_the_fingerprint_of_runs_from_before_preparing_in_workdirs(prepared):
  from train.checkpoint import fingerprint

  config, _ = prepared  # data.prepare_in_workdir=False
  assert "prepare_in_workdir" not in fingerprint(config)["data"]
  assert "prepare_workers" not in fingerprint(config)["data"]
  config = set_keys(config.copy_and_resolve_references(), {"data.prepare_in_workdir": True})
  assert fingerprint(config)["data"]["prepare_in_workdir"] is True


def test_a_workdir_prepared_from_other_text_is_refused(prepared, tmp_path):
  from train.errors import UserError
  from train.tasks.pretraining import prepare_in_workdir

  config, directory = prepared
  workdir = tmp_path / "run"
  shutil.copytree(directory, workdir / "data")
  other = set_keys(
    config.copy_and_resolve_references(), {"data.paths": config.data.paths[:-5] + "1.txt"}
  )
  with pytest.raises(UserError, match="this workdir's corpus was prepared from .*part-2.txt"):
    prepare_in_workdir(other, str(workdir))
  assert prepare_in_workdir(config, str(workdir)) == str(workdir / "data")
  tables = set_keys(config.copy_and_resolve_references(), {"data.text_columns": "sentence"})
  with pytest.raises(UserError, match="data.text_columns='sentence' is read in memory only"):
    prepare_in_workdir(tables, str(workdir))


@pytest.mark.parametrize(
  "override, named",
  [
    ({"data.max_seq_length": 24}, "data.max_seq_length=32"),
    ({"data.lowercase": False}, "data.lowercase=True"),
    ({"data.next_sentence": False}, "data.next_sentence=True"),
    ({"data.sentence_order": True}, "data.sentence_order=False"),
  ],
)
def test_a_run_with_other_options_than_the_preparation_is_refused(prepared, override, named):
  config, directory = prepared
  with pytest.raises(ValueError, match="prepared with " + named) as error:
    loop.train_and_evaluate(prepared_config(config, directory, **override), directory + "_run")
  assert "\n" not in str(error.value) and shards.MANIFEST in str(error.value)


def test_a_manifest_from_before_next_sentence_reads_as_nsp_pairs(prepared, tmp_path):
  config, directory = prepared
  old = str(tmp_path / "old")
  shutil.copytree(directory, old)
  path = os.path.join(old, shards.MANIFEST)
  manifest = json.load(open(path))
  del manifest["options"]["next_sentence"]
  json.dump(manifest, open(path, "w"))
  shards.check_manifest(manifest, config.data, manifest["vocab_sha256"], old)
  off = set_keys(config.copy_and_resolve_references(), {"data.next_sentence": False})
  with pytest.raises(ValueError, match="prepared with data.next_sentence=True"):
    shards.check_manifest(manifest, off.data, manifest["vocab_sha256"], old)


def prepare_train_rows(tmp_path, name: str, **overrides):
  """(config, directory, manifest, tokenizer, every train row) of a corpus prepared with
  `overrides`."""
  config = corpus_config(tmp_path, **overrides)
  directory = str(tmp_path / name)
  prepare.prepare(config, directory, workers=1)
  manifest = shards.read_manifest(directory)
  tokenizer = tokenizer_lib.load_tokenizer(config.data.vocab)
  rows = shards.PreparedRows(directory, "train", manifest, tokenizer.pad_token_id)
  return config, directory, manifest, tokenizer, rows.rows(np.arange(len(rows)))


def test_mlm_alone_prepares_single_segment_rows(tmp_path):
  _, _, manifest, _, batch = prepare_train_rows(tmp_path, "mlm", **{"data.next_sentence": False})
  assert manifest["options"]["next_sentence"] is False
  assert not batch["token_type_ids"].any() and not batch["next_sentence_label"].any()
  assert batch["attention_mask"].mean() > 0.8  # rows are filled across documents


def test_sentence_order_prepares_the_sop_pairs_memory_builds(tmp_path):
  sop = {"data.sentence_order": True}
  config, directory, manifest, _, batch = prepare_train_rows(tmp_path, "sop", **sop)
  assert manifest["options"]["sentence_order"] is True
  assert 0.3 < batch["next_sentence_label"].mean() < 0.7
  _, tokenizer, documents = assert_shards_are_built_in_memory(
    config, directory, sentence_order=True
  )
  # ... which are not the NSP pairs of the same documents: the option reached the pairs.
  nsp, _ = build_pretraining_data(documents[0], tokenizer, 32, 0.1, 2, (0, 0, 0))
  sop, _ = build_pretraining_data(
    documents[0], tokenizer, 32, 0.1, 2, (0, 0, 0), sentence_order=True
  )
  assert not np.array_equal(nsp["input_ids"], sop["input_ids"])


def test_packed_mlm_rows_prepare_and_a_run_unpacked_is_refused(tmp_path):
  packed = {"data.next_sentence": False, "data.packing": True}
  config, directory, manifest, tokenizer, batch = prepare_train_rows(tmp_path, "packed", **packed)
  assert manifest["options"]["packing"] is True
  ids = batch["input_ids"]
  assert (ids[:, 0] == tokenizer.cls_token_id).all()
  assert ((ids == tokenizer.cls_token_id).sum(1) > 1).any()  # several examples a row
  stats = json.loads((tmp_path / "packed" / shards.STATS).read_text())
  assert stats["train"]["real_token_share"] == pytest.approx(batch["attention_mask"].mean())
  run = prepared_config(config, directory, **{"data.packing": False})
  with pytest.raises(ValueError, match="prepared with data.packing=True"):
    loop.train_and_evaluate(run, str(tmp_path / "run"))


def test_another_vocab_is_refused(prepared, tmp_path):
  config, directory = prepared
  other = tmp_path / "vocab.txt"
  other.write_text(open(config.data.vocab).read().replace("cat\n", "kitten\n"))
  with pytest.raises(ValueError, match="prepared with another vocab"):
    loop.train_and_evaluate(
      prepared_config(config, directory, **{"data.vocab": str(other)}), str(tmp_path / "run")
    )


def test_a_truncated_shard_is_named(prepared, tmp_path):
  config, directory = prepared
  copy = tmp_path / "copy"
  shutil.copytree(directory, copy)
  victim = json.loads((copy / shards.MANIFEST).read_text())["splits"]["train"][1]["file"]
  data = (copy / victim).read_bytes()
  (copy / victim).write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError) as error:
    loop.train_and_evaluate(prepared_config(config, str(copy)), str(tmp_path / "run"))
  assert victim in str(error.value) and "\n" not in str(error.value)


def test_preparing_again_keeps_what_is_there(prepared):
  config, directory = prepared
  before = file_bytes(directory)
  assert prepare.prepare(config, directory, workers=1) == shards.read_manifest(directory)
  changed = set_keys(config.copy_and_resolve_references(), {"data.dupe_factor": 3})
  with pytest.raises(ValueError, match="prepared from other files or options"):
    prepare.prepare(changed, directory, workers=1)
  assert file_bytes(directory) == before


def test_an_unprepared_directory_says_how_to_prepare(tmp_path):
  config = prepared_config(tiny_config(tmp_path), str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="python -m data.prepare"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_the_prefetcher_gives_each_steps_batch_in_order_and_raises_its_errors():
  def batch(step):
    if step == 4:
      raise ValueError("bad row in step 4")
    return {"step": step}

  prefetcher = Prefetcher(batch, range(2, 6), depth=2)
  assert [prefetcher.get(step)["step"] for step in (2, 3)] == [2, 3]
  with pytest.raises(ValueError, match="bad row in step 4"):
    prefetcher.get(4)
  with pytest.raises(RuntimeError, match="asked for step 7, holds step 5"):
    prefetcher.get(7)
  prefetcher.close()


def test_a_tfds_dataset_prepares_what_the_same_documents_in_a_text_file_do(tmp_path):
  """data.source='tfds': examples read by index in chunks through tfds.data_source (here
  TFDS's mock data), keyed as a text file's documents, so the shards are byte-identical to
  those of one file holding the same documents."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from data.corpus import tfds_documents

  name = "wikipedia/20230601.en"
  with tfds.testing.mock_data(num_examples=40):
    documents = tfds_documents(name, split="train")
    assert len(documents) == 40  # no example without text: keys line up with the file's
    from_text = tiny_config(tmp_path, **{"data.num_shards": 2, "data.heldout_documents": 0.1})
    text = tmp_path / "tfds_documents.txt"
    text.write_text("\n\n".join("\n".join(d) for d in documents) + "\n")
    assert list(prepare.read_documents(str(text))) == documents
    from_text.data.paths = str(text)
    prepare.prepare(from_text, str(tmp_path / "text"), workers=1)
    from_tfds = set_keys(
      from_text.copy_and_resolve_references(),
      {"data.source": "tfds", "data.tfds_name": name, "data.paths": ""},
    )
    manifest = prepare.prepare(from_tfds, str(tmp_path / "tfds"), workers=1)
  assert manifest["files"] == [f"tfds:{name}[train]"]
  text_files, tfds_files = file_bytes(tmp_path / "text"), file_bytes(tmp_path / "tfds")
  assert len(text_files) == 4 and text_files == tfds_files
