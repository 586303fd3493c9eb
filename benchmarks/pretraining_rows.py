"""How full pretraining rows are in each layout, on a real corpus: NSP pairs, MLM rows of
whole sentences running on across documents (RoBERTa's FULL-SENTENCES), and packed rows
(data.packing=True: one document's chunk an example, several a row). No model runs.

  python -m benchmarks.pretraining_rows --corpus=/tmp/payoff/corpus.txt \\
      --vocab=/tmp/payoff/pretrain/vocab/vocab.txt

The corpus is in the BERT text format (a sentence a line, a blank line between documents),
e.g. what benchmarks.scratch_payoff writes; the vocab any WordPiece vocab.txt.
"""

from __future__ import annotations

from absl import app, flags

from data.corpus import read_bert_text_files
from data.pretraining import build_pretraining_data
from data.tokenizer import load_tokenizer

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", None, "A BERT-format text file.")
flags.DEFINE_string("vocab", None, "vocab.txt.")
flags.DEFINE_integer("max_seq_length", 128, "Positions a row.")
flags.DEFINE_float("short_seq_prob", 0.1, "As data.short_seq_prob.")

LAYOUTS = {
  "NSP pairs (data.next_sentence=True)": {"next_sentence": True},
  "whole sentences across documents (next_sentence=False)": {"next_sentence": False},
  "packed (next_sentence=False, packing=True)": {"next_sentence": False, "packing": True},
}


def main(argv):
  del argv
  documents = read_bert_text_files([FLAGS.corpus])
  tokenizer = load_tokenizer(FLAGS.vocab)
  print(f"{FLAGS.corpus}: {len(documents)} documents; rows of {FLAGS.max_seq_length}\n")
  print("| layout | rows | real-token share | rows under half full |")
  print("|---|---:|---:|---:|")
  for name, layout in LAYOUTS.items():
    arrays, stats = build_pretraining_data(
      documents, tokenizer, FLAGS.max_seq_length, FLAGS.short_seq_prob, **layout
    )
    lengths = arrays["attention_mask"].sum(-1)
    half = (lengths < FLAGS.max_seq_length // 2).mean()
    print(
      f"| {name} | {stats.num_instances:,} | {100 * stats.real_token_share:.1f} % "
      f"| {100 * half:.1f} % |"
    )


if __name__ == "__main__":
  flags.mark_flags_as_required(["corpus", "vocab"])
  app.run(main)
