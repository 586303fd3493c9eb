"""How much padding each choice of `data.bucket_lengths` computes, on real training batches.

The rows of each batch are the ones our fine-tuning draws (FinetuneData's
sampler, seed 0); the table gives the mean padded length per batch against the
batch's longest row (what `DataCollatorWithPadding` pads to), and how many
distinct lengths (compiles) the batches needed. A second table gives packed
rows (`data.packing=True`): the rows of max_seq_length each step needs, when
steps are the random batches above and when they are length-balanced as a
packed run draws them (data/sampling.LengthBalancedSampler), and the real-token
share at the run's one shape. No model runs: seconds.

  python -m benchmarks.bucket_padding --train_tsv=../shared/data/sst2/train.tsv
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from benchmarks.shared import minilm_dir
from data import classification, packing
from data.finetune import bucket_lengths
from data.sampling import EpochSampler, LengthBalancedSampler
from data.tokenizer import load_tokenizer

FLAGS = flags.FLAGS
flags.DEFINE_string("train_tsv", None, "A GLUE-style TSV with a header (sentence, label).")
flags.DEFINE_integer("batch_size", 32, "Rows per batch.")
flags.DEFINE_integer("steps", 200, "Batches drawn.")
flags.DEFINE_integer("max_seq_length", 128, "Longest row; longer text is truncated.")
flags.DEFINE_list("settings", ["none", "16,32,64", "auto", "8,16,24,32,40,48,56,64,80,96,112"], "")


def main(argv):
  del argv
  examples = classification.read_examples(FLAGS.train_tsv, ["sentence"], "label")
  labels = classification.resolve_labels((), examples)
  arrays, _ = classification.encode_examples(
    examples, load_tokenizer(minilm_dir()), FLAGS.max_seq_length, labels
  )
  lengths = arrays["attention_mask"].sum(-1)
  sampler = EpochSampler(len(lengths), FLAGS.batch_size, 0, "rows")
  longest = np.array([lengths[sampler.indices(step)].max() for step in range(FLAGS.steps)])
  print(f"{len(lengths)} rows, {lengths.mean():.1f} tokens on average; {FLAGS.steps} batches of")
  print(f"{FLAGS.batch_size}, longest row {longest.mean():.1f} tokens on average\n")
  print("| data.bucket_lengths | lengths | mean padded length | x longest row | compiles |")
  print("|---|---|---:|---:|---:|")
  for setting in FLAGS.settings:
    buckets = bucket_lengths(setting, FLAGS.max_seq_length)
    padded = np.array([next(n for n in buckets if n >= m) for m in longest])
    shown = ", ".join(map(str, buckets))
    print(
      f"| {setting} | {shown} | {padded.mean():.1f} | {padded.mean() / longest.mean():.2f} "
      f"| {len(set(padded))} |"
    )
  print(
    f"\n| packed steps ({FLAGS.steps}) "
    f"| rows of {FLAGS.max_seq_length} a step: fewest / mean / most "
    "| the run's shape | real tokens |"
  )
  print("|---|---:|---:|---:|")
  balanced = LengthBalancedSampler(lengths, FLAGS.batch_size, 0, "rows")
  for name, steps in (("random (unpacked batches)", sampler), ("length-balanced", balanced)):
    rows = [
      len(packing.first_fit(lengths[steps.indices(s)], FLAGS.max_seq_length))
      for s in range(FLAGS.steps)
    ]
    shape, share = packing.plan_shape(lengths, steps, FLAGS.steps, FLAGS.max_seq_length)
    print(
      f"| {name} | {min(rows)} / {np.mean(rows):.2f} / {max(rows)} | {shape.rows} rows "
      f"| {100 * share:.1f} % |"
    )


if __name__ == "__main__":
  flags.mark_flag_as_required("train_tsv")
  app.run(main)
