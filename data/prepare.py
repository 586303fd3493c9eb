"""Raw text -> prepared pretraining shards, once, on Apache Beam.

  python -m data.prepare --config=configs/pretrain/bert_base.py --out=/data/wiki_128 \
      [--workers=8] [--config.data.paths='/text/*.txt'] [-- --runner=DataflowRunner ...]

Why Beam: the same pipeline runs here on the DirectRunner with worker processes and on
Dataflow, Flink or Spark through Beam's own pipeline options (the arguments after `--`),
so a corpus too big for one machine needs no second preprocessor. The job is ours rather
than a TFDS builder because its output depends on the run's options (vocab, sequence
length, dupe factor, seed), which TFDS would have to carry as builder configs.

The pipeline:
  files -> documents, each keyed by (file number, document number), which fixes its place
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
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
from absl import logging
from etils import epath

from data import shards

SPLIT_IDS = {"train": 0, "heldout": 1}


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
      heldout_documents=data.heldout_documents,
      num_shards=data.num_shards,
      seed=config.seed,
    )


def expand_patterns(patterns: Sequence[str]) -> list[str]:
  """Files matching comma-free glob patterns, local or gs:// (magic in the last part only)."""
  files = []
  for pattern in patterns:
    if "://" in pattern:
      parent, name = pattern.rsplit("/", 1)
      matches = sorted(os.fspath(p) for p in epath.Path(parent).glob(name))
    else:
      matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
      matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(f"no file matches {pattern}")
    files.extend(matches)
  return files


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


def learn_or_copy_vocab(options: Options, files: Sequence[str], out: str, config) -> object:
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
        count = 0
        for path in files:
          for document in read_documents(path):
            yield from document
            count += 1
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


def build_pipeline(root, files: Sequence[str], options: Options, out: str, results: str):
  """The Beam graph on `root` (a Pipeline); writes shards under `out`, one JSON line per
  shard to `results`."""
  documents = (
    root
    | "Files" >> beam.Create(list(enumerate(files)))
    | "Reshuffle" >> beam.Reshuffle()  # files spread over workers
    | "Read" >> beam.FlatMap(_ReadFile())
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
  if config.data.source != "text":
    raise ValueError(f"data.source={config.data.source!r}: data.prepare reads text files")
  files = expand_patterns([p for p in config.data.paths.split(",") if p])
  out_path = epath.Path(out)
  if (out_path / shards.MANIFEST).exists():
    manifest = shards.read_manifest(out)
    if manifest["options"] != dataclasses.asdict(options) or manifest["files"] != files:
      raise ValueError(
        f"{out_path / shards.MANIFEST}: prepared from other files or options; "
        "use another --out (nothing there was changed)"
      )
    logging.info("%s is already prepared with these options", out)
    return manifest
  out_path.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  tokenizer = learn_or_copy_vocab(options, files, out, config)
  results = os.fspath(out_path / "shards.jsonl.partial")
  if beam_args:
    pipeline_options = PipelineOptions(list(beam_args))
  else:  # this machine: worker processes of the DirectRunner
    pipeline_options = PipelineOptions(
      direct_num_workers=workers,
      direct_running_mode="multi_processing" if workers > 1 else "in_memory",
    )
  with beam.Pipeline(options=pipeline_options) as root:
    build_pipeline(root, files, options, out, results)
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
  seconds = time.perf_counter() - started
  megabytes = sum(epath.Path(f).stat().length for f in files) / 1e6
  tokens = sum(s["num_tokens"] for s in stats.values())
  stats["seconds"] = seconds
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
    "prepared %s: %.1f MB of text, %d tokens -> %d train + %d heldout instances in %.1f s "
    "(%.2f MB/s, %.0f tokens/s)",
    out,
    megabytes,
    tokens,
    stats["train"]["num_instances"],
    stats["heldout"]["num_instances"],
    seconds,
    stats["megabytes_per_second"],
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
