"""Raw text -> prepared pretraining shards, once, on Apache Beam.

  python -m data.prepare --config=configs/pretrain/bert_base.py --out=/data/wiki_128 \
      [--workers=8] [--config.data.paths='/text/*.txt'] [-- --runner=DataflowRunner ...]
  python -m data.prepare --config=configs/pretrain/bert_base.py --out=/data/wiki_128 \
      --config.data.source=tfds --config.data.tfds_name=wikipedia/20230601.en

Why Beam: the same pipeline runs here on the DirectRunner with worker processes and on
Dataflow, Flink or Spark through Beam's own pipeline options (the arguments after `--`),
so a corpus too big for one machine needs no second preprocessor. The job is ours rather
than a TFDS builder because its output depends on the run's options (vocab, sequence
length, dupe factor, seed), which TFDS would have to carry as builder configs.

The pipeline:
  files (or chunks of a TFDS dataset's examples) -> documents, each keyed by (file number,
  document number) (or (chunk, example index)), which fixes its place
  -> a split (heldout or train) and a shard, from a hash of that key and the seed
  -> per shard, in key order: tokenize, make NSP pairs (data/pretraining.py's own
     build_pretraining_data, seeded by (seed, split, shard)), write one ArrayRecord file
  -> manifest.json and stats.json (data/shards.py).
Nothing depends on which worker ran what, so the shards are the same for any number of
workers. "Random next" B segments come from another document of the same shard, as
google-research/bert draws them from its input file: with data.num_shards chosen so that
a shard holds a few thousand documents or more, a random B is a fair sample of the corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
from absl import logging
from etils import epath

from data import shards
from data.corpus import expand_patterns

SPLIT_IDS = {"train": 0, "heldout": 1}
TFDS_CHUNK = 10_000  # TFDS examples one Beam work item reads


@dataclasses.dataclass(frozen=True)
class Options:
  """What a preparation depends on (all from config.data, plus the seed)."""

  vocab: str
  lowercase: bool
  max_seq_length: int
  short_seq_prob: float
  dupe_factor: int
  whole_word: bool
  segmenter: str
  next_sentence: bool
  packing: bool
  sentence_order: bool
  heldout_documents: float
  num_shards: int
  seed: int

  @classmethod
  def from_config(cls, config) -> Options:
    data = config.data
    return cls(
      vocab=data.vocab,
      lowercase=data.lowercase,
      max_seq_length=data.max_seq_length,
      short_seq_prob=data.short_seq_prob,
      dupe_factor=data.dupe_factor,
      whole_word=data.whole_word,
      segmenter=data.get("segmenter", ""),
      next_sentence=data.get("next_sentence", True),
      packing=data.get("packing", False),
      sentence_order=data.get("sentence_order", False),
      heldout_documents=data.heldout_documents,
      num_shards=data.num_shards,
      seed=config.seed,
    )


def read_documents(path: str) -> Iterator[list[str]]:
  """Documents of one google-research/bert format file (a sentence a line, blank line
  between documents), streamed; a bad byte is reported as file:line."""
  current: list[str] = []
  with epath.Path(path).open("rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{path}:{line_number}: not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
      line = (line.lstrip("\ufeff") if line_number == 1 else line).strip()
      if line:
        current.append(line)
      elif current:
        yield current
        current = []
  if current:
    yield current


def unit_hash(*parts) -> float:
  """A number in [0, 1) from `parts`, the same in every process and on every machine."""
  digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2**64


def place(key: str, options: Options, heldout_fraction: float) -> tuple[str, int]:
  """(split, shard) of the document at `key`."""
  split = "heldout" if unit_hash("heldout", options.seed, key) < heldout_fraction else "train"
  return split, int(unit_hash("shard", options.seed, key) * options.num_shards)


def heldout_fraction(heldout: float, num_documents: int) -> float:
  """data.heldout_documents as the chance that a document is held out: a fraction in (0, 1)
  as given, a count as count / documents (so about that many are held out)."""
  if 0.0 < heldout < 1.0:
    return float(heldout)
  if heldout >= 1 and float(heldout).is_integer() and heldout < num_documents:
    return float(heldout) / num_documents
  raise ValueError(
    f"data.heldout_documents={heldout}: a fraction in (0, 1) or a count below the "
    f"{num_documents} documents"
  )


def load_vocab(options: Options, out: str):
  """The tokenizer the shards are in: data.vocab, or for 'train' the one learned into
  OUT/vocab before the pipeline starts."""
  from data import tokenizer as tokenizer_lib

  vocab = os.path.join(out, shards.VOCAB) if options.vocab == "train" else options.vocab
  return tokenizer_lib.load_tokenizer(vocab, lowercase=options.lowercase)


def learn_or_copy_vocab(options: Options, documents, out: str, config) -> object:
  """Writes OUT/vocab/vocab.txt: learned from the first data.vocab_sample_documents
  documents for data.vocab='train' (a bounded sample, whatever the corpus size), else
  data.vocab's own list. Training on these shards reads the ids back from this file."""
  from data import tokenizer as tokenizer_lib

  vocab_dir = epath.Path(out) / os.path.dirname(shards.VOCAB)
  vocab_dir.mkdir(parents=True, exist_ok=True)
  if options.vocab == "train":
    if not (vocab_dir / "vocab.txt").exists():
      limit = config.data.vocab_sample_documents

      def sample() -> Iterator[str]:
        for count, document in enumerate(documents(), start=1):
          yield from document
          if count >= limit:
            return

      tokenizer_lib.train_wordpiece(
        sample(), config.data.train_vocab_size, os.fspath(vocab_dir), options.lowercase
      )
    return load_vocab(options, out)
  tokenizer = load_vocab(options, out)
  by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
  (vocab_dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
  return tokenizer


class _ReadFile:
  """(file number, path) -> ((key, document), ...) with keys in corpus order."""

  def __call__(self, numbered_path):
    number, path = numbered_path
    for index, document in enumerate(read_documents(path)):
      yield f"{number:06d}/{index:010d}", document


class _ReadTfds:
  """(chunk number, first, end) -> ((key, document), ...) of those TFDS examples, keyed
  (chunk, example index) as _ReadFile keys (file, document): one chunk of a dataset places
  its documents as one file of the same documents would."""

  def __init__(self, name: str, split: str, text_key: str, data_dir: str):
    self.name, self.split, self.text_key, self.data_dir = name, split, text_key, data_dir
    self.source = None  # opened once per worker

  def __call__(self, chunk):
    from data.corpus import tfds_document, tfds_source

    if self.source is None:
      self.source = tfds_source(self.name, self.split, self.data_dir)
    number, first, end = chunk
    for index in range(first, end):
      where = f"{self.name}[{self.split}] example {index}"
      document = tfds_document(self.source[index], self.text_key, where)
      if document:
        yield f"{number:06d}/{index:010d}", document


@dataclasses.dataclass
class Input:
  """What a preparation reads: Beam work items, the reader that turns one into keyed
  documents, the documents in order (for the vocab sample), what the manifest records,
  and the bytes of text when known."""

  units: list
  read: object
  documents: object
  names: list[str]
  megabytes: float | None


def input_of(config) -> Input:
  """data.source 'text' (data.paths: files or globs, gs:// too) or 'tfds' (data.tfds_name,
  read by index through tfds.data_source in chunks of TFDS_CHUNK examples)."""
  data = config.data
  if data.source == "text":
    files = expand_patterns([p for p in data.paths.split(",") if p])

    def documents():
      for path in files:
        yield from read_documents(path)

    megabytes = sum(epath.Path(f).stat().length for f in files) / 1e6
    return Input(list(enumerate(files)), _ReadFile(), documents, files, megabytes)
  if data.source == "tfds":
    from data.corpus import tfds_source

    if not data.tfds_name:
      raise ValueError("data.source='tfds' needs data.tfds_name (e.g. wikipedia/20230601.en)")
    read = _ReadTfds(data.tfds_name, data.tfds_split, data.tfds_text_key, data.tfds_data_dir)
    count = len(tfds_source(data.tfds_name, data.tfds_split, data.tfds_data_dir))
    starts = range(0, count, TFDS_CHUNK)
    units = [(n, first, min(first + TFDS_CHUNK, count)) for n, first in enumerate(starts)]

    def documents():
      reader = _ReadTfds(data.tfds_name, data.tfds_split, data.tfds_text_key, data.tfds_data_dir)
      for unit in units:  # a reader of its own: `read` goes to the workers unopened
        for _, document in reader(unit):
          yield document

    return Input(units, read, documents, [f"tfds:{data.tfds_name}[{data.tfds_split}]"], None)
  raise ValueError(
    f"data.source={data.source!r}: data.prepare reads 'text' files or a 'tfds' dataset"
  )


class _MakeShard(beam.DoFn):
  """((split, shard), [(key, document), ...]) -> the shard's file and statistics."""

  def __init__(self, options: Options, out: str):
    self.options, self.out = options, out
    self.tokenizer = self.segment = None

  def setup(self):
    from data import chinese

    self.tokenizer = load_vocab(self.options, self.out)
    self.segment = chinese.segmenter(self.options.segmenter)

  def process(self, element):
    from data.pretraining import build_pretraining_data

    (split, shard), keyed = element
    started = time.perf_counter()
    documents = [document for _, document in sorted(keyed)]
    o = self.options
    arrays, stats = build_pretraining_data(
      documents,
      self.tokenizer,
      o.max_seq_length,
      o.short_seq_prob,
      o.dupe_factor,
      seed=(o.seed, SPLIT_IDS[split], shard),
      whole_word=o.whole_word,
      segment=self.segment,
      next_sentence=o.next_sentence,
      packing=o.packing,
      sentence_order=o.sentence_order,
    )
    name = shards.shard_name(split, shard, o.num_shards)
    count = shards.write_shard(os.fspath(epath.Path(self.out) / name), arrays)
    logging.info(
      "%s: %d documents -> %d instances in %.1f s",
      name,
      len(documents),
      count,
      time.perf_counter() - started,
    )
    yield json.dumps(
      {"split": split, "shard": shard, "file": name, "count": count, **dataclasses.asdict(stats)}
    )


def build_pipeline(root, source: Input, options: Options, out: str, results: str):
  """The Beam graph on `root` (a Pipeline); writes shards under `out`, one JSON line per
  shard to `results`."""
  documents = (
    root
    | "Inputs" >> beam.Create(source.units)
    | "Reshuffle" >> beam.Reshuffle()  # files or chunks spread over workers
    | "Read" >> beam.FlatMap(source.read)
  )
  count = documents | "Count" >> beam.combiners.Count.Globally()

  def placed(keyed, num_documents):
    fraction = heldout_fraction(options.heldout_documents, num_documents)
    return place(keyed[0], options, fraction), keyed

  _ = (
    documents
    | "Place" >> beam.Map(placed, num_documents=beam.pvalue.AsSingleton(count))
    | "Group" >> beam.GroupByKey()
    | "Shard" >> beam.ParDo(_MakeShard(options, out))
    | "Results" >> beam.io.WriteToText(results, num_shards=1, shard_name_template="")
  )


def prepare(config, out: str, workers: int = 2, beam_args: Sequence[str] = ()) -> dict:
  """Runs the pipeline into `out` and writes its manifest; returns the manifest.

  A directory that already holds a manifest is never overwritten: the same options return
  it as it is (a rerun is free), other options are refused.
  """
  import logging as python_logging

  from apache_beam.options.pipeline_options import PipelineOptions

  python_logging.getLogger("apache_beam").setLevel(python_logging.WARNING)
  # Its workers' start-up notes arrive as warnings of the job service: not ours to act on.
  python_logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
    python_logging.ERROR
  )
  options = Options.from_config(config)
  source = input_of(config)
  files = source.names
  out_path = epath.Path(out)
  if (out_path / shards.MANIFEST).exists():
    manifest = shards.read_manifest(out)
    recorded = {**shards.FIELD_DEFAULTS, **manifest["options"]}  # fields added since
    if recorded != dataclasses.asdict(options) or manifest["files"] != files:
      raise ValueError(
        f"{out_path / shards.MANIFEST}: prepared from other files or options; "
        "use another --out (nothing there was changed)"
      )
    logging.info("%s is already prepared with these options", out)
    return manifest
  out_path.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  tokenizer = learn_or_copy_vocab(options, source.documents, out, config)
  results = os.fspath(out_path / "shards.jsonl.partial")
  if beam_args:
    pipeline_options = PipelineOptions(list(beam_args))
  else:  # this machine: worker processes of the DirectRunner
    pipeline_options = PipelineOptions(
      direct_num_workers=workers,
      direct_running_mode="multi_processing" if workers > 1 else "in_memory",
    )
  with beam.Pipeline(options=pipeline_options) as root:
    build_pipeline(root, source, options, out, results)
  made = sorted(
    (json.loads(line) for line in epath.Path(results).read_text().splitlines()),
    key=lambda shard: (shard["split"], shard["shard"]),
  )
  epath.Path(results).unlink()
  splits = {split: [s for s in made if s["split"] == split] for split in shards.SPLITS}
  for split, made_shards in splits.items():
    if not made_shards:
      raise ValueError(f"no {split} documents: raise (or lower) data.heldout_documents")
  stats = {
    split: {
      field: sum(s[field] for s in made_shards)
      for field in ("num_documents", "num_sentences", "num_tokens", "num_instances")
    }
    for split, made_shards in splits.items()
  }
  for split, made_shards in splits.items():  # the shards' shares, weighted by their rows
    rows = max(stats[split]["num_instances"], 1)
    share = sum(s["real_token_share"] * s["num_instances"] for s in made_shards) / rows
    stats[split]["real_token_share"] = share
  seconds = time.perf_counter() - started
  megabytes = source.megabytes
  tokens = sum(s["num_tokens"] for s in stats.values())
  stats["seconds"] = seconds
  if megabytes is not None:  # TFDS gives examples, not a byte count
    stats["megabytes_per_second"] = megabytes / seconds
  stats["tokens_per_second"] = tokens / seconds
  manifest = {
    "layout": shards.LAYOUT,
    "options": dataclasses.asdict(options),
    "files": files,
    "vocab_sha256": shards.vocab_sha256(tokenizer),
    "pad_id": tokenizer.pad_token_id,
    "splits": {
      split: [{"file": s["file"], "count": s["count"]} for s in made_shards]
      for split, made_shards in splits.items()
    },
  }
  (out_path / shards.STATS).write_text(json.dumps(stats, indent=1))
  # The manifest goes last: a directory with one is complete.
  (out_path / shards.MANIFEST).write_text(json.dumps(manifest, indent=1))
  logging.info(
    "prepared %s from %s: %d tokens -> %d train + %d heldout instances in %.1f s (%.0f tokens/s)",
    out,
    ", ".join(files) if len(files) < 4 else f"{len(files)} files",
    tokens,
    stats["train"]["num_instances"],
    stats["heldout"]["num_instances"],
    seconds,
    stats["tokens_per_second"],
  )
  return manifest


def main(argv):
  from absl import flags

  FLAGS = flags.FLAGS
  prepare(FLAGS.config, FLAGS.out, FLAGS.workers, argv[1:])


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  from train import cli

  config_flags.DEFINE_config_file("config", None, "A pretraining config (configs/pretrain/...).")
  flags.DEFINE_string("out", None, "The directory the shards go to (local or gs://).")
  flags.DEFINE_integer("workers", 2, "DirectRunner worker processes (without Beam arguments).")
  flags.mark_flags_as_required(["config", "out"])
  cli.run(main)
