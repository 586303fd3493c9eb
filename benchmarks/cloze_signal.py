"""Does an MLM head know the labels at a prompt's [MASK]? Per template and verbalizer pair.

Zero-shot cloze accuracy mixes two things: whether the label-word logits move
with the label at all, and whether one word wins whatever the text. This
separates them, on SST-2 dev with the project's own cloze encoding
(data/cloze.py) and the weights of any checkpoint with an MLM head (our
pretraining workdirs, HF `BertForPreTraining` / `BertForMaskedLM` directories):

  auc         ROC AUC of logit(positive word) - logit(negative word) against the
              label: 0.5 is no signal, whatever the threshold
  raw         zero-shot accuracy, the argmax (what configs/finetune/sst2_prompt.py scores)
  calibrated  the same, divided by the content-free probabilities of 'N/A' and
              '[MASK]' (Zhao et al. 2021; data.calibration_texts)
  top words   the words the head puts at [MASK] most often
  ensemble    every template and verbalizer pair at once, PET's uniform ensemble:
              the mean over pairs of the log-probability gap (positive - negative
              word), raw and calibrated

  python -m benchmarks.cloze_signal --checkpoint=/tmp/tapt --data_dir=../shared/data
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
from absl import app, flags
from sklearn.metrics import roc_auc_score  # scikit-learn comes with seqeval

from data import classification, cloze
from train import api
from train.tasks.cloze import calibrated_predictions

flags.DEFINE_string("checkpoint", "", "A pretraining workdir or an HF directory with an MLM head.")
flags.DEFINE_string("data_dir", "../shared/data", "Holds sst2/dev.tsv.")
flags.DEFINE_multi_string(
  "template",
  [
    "{sentence} It was [MASK].",
    "{sentence} All in all, it was [MASK].",
    "It was [MASK]. {sentence}",
  ],
  "A cloze template ({sentence} and one [MASK]); repeat the flag for several.",
)
flags.DEFINE_list(
  "pairs",
  ["terrible:great", "bad:good", "awful:wonderful", "boring:fun"],
  "Verbalizers, negative:positive, each word one vocab token.",
)
flags.DEFINE_integer("batch_size", 32, "Rows a forward pass.")
FLAGS = flags.FLAGS
CONTENT_FREE = ("N/A", "[MASK]")


def word_logits(model, arrays: dict, batch_size: int) -> np.ndarray:
  """[rows, vocab] MLM logits at each row's [MASK], each batch cut to its longest row."""
  out = []
  for start in range(0, len(arrays["input_ids"]), batch_size):
    rows = {k: v[start : start + batch_size] for k, v in arrays.items()}
    length = int(rows["attention_mask"].sum(-1).max())
    logits = model(
      rows["input_ids"][:, :length],
      rows["token_type_ids"][:, :length],
      rows["attention_mask"][:, :length],
    )["mlm_logits"]
    out.append(np.asarray(logits)[np.arange(len(logits)), rows["mask_position"]])
  return np.concatenate(out)


def log_gap(pair: np.ndarray, content_free: np.ndarray | None = None) -> np.ndarray:
  """log p(positive word) - log p(negative word) over the two words, per row; with
  content-free rows, each probability divided by their mean first (calibrated)."""
  logp = pair - np.logaddexp(pair[:, :1], pair[:, 1:])
  if content_free is not None:
    free = content_free - np.logaddexp(content_free[:, :1], content_free[:, 1:])
    logp = logp - np.log(np.exp(free).mean(0))
  return logp[:, 1] - logp[:, 0]


def encode(rows: list, template: str, tokenizer) -> dict:
  return cloze.encode_cloze(rows, ["sentence"], template, tokenizer, 128, ["0", "1"])[0]


def main(argv):
  del argv
  if not FLAGS.checkpoint:
    raise app.UsageError("--checkpoint: a pretraining workdir or an HF directory")
  model, tokenizer = api.load(FLAGS.checkpoint, head="pretraining")
  path = os.path.join(FLAGS.data_dir, "sst2", "dev.tsv")
  examples = classification.read_examples(path, ["sentence"], "label", has_header=True)
  labels = np.array([int(e.label) for e in examples])
  content_free = [classification.TextExample(t, None, None, "content-free") for t in CONTENT_FREE]
  pairs = [tuple(p.split(":")) for p in FLAGS.pairs]
  print(f"{FLAGS.checkpoint}: SST-2 dev ({len(examples)} sentences)\n")
  print("| template | verbalizer | auc | raw | calibrated |")
  print("|---|---|---:|---:|---:|")
  tops, gaps, calibrated_gaps = {}, [], []
  for template in FLAGS.template:
    logits, free = (
      word_logits(model, encode(rows, template, tokenizer), FLAGS.batch_size)
      for rows in (examples, content_free)
    )
    top = np.bincount(logits.argmax(-1), minlength=logits.shape[-1]).argsort()[::-1][:6]
    tops[template] = tokenizer.convert_ids_to_tokens(top.tolist())
    for negative, positive in pairs:
      ids = cloze.verbalizer_token_ids((negative, positive), ["0", "1"], tokenizer)
      pair = logits[:, ids]
      raw = (pair.argmax(-1) == labels).mean()
      calibrated = (calibrated_predictions(pair, free[:, ids]) == labels).mean()
      score = roc_auc_score(labels, pair[:, 1] - pair[:, 0])
      gaps.append(log_gap(pair))
      calibrated_gaps.append(log_gap(pair, free[:, ids]))
      print(
        f"| `{template}` | {negative} / {positive} | {score:.3f} | {100 * raw:.2f} | "
        f"{100 * calibrated:.2f} |"
      )
  raw_gap, calibrated_gap = np.mean(gaps, 0), np.mean(calibrated_gaps, 0)
  print(
    f"| all {len(gaps)} pairs, mean gap (PET's uniform ensemble) | | "
    f"{roc_auc_score(labels, calibrated_gap):.3f} | {100 * ((raw_gap > 0) == labels).mean():.2f} | "
    f"{100 * ((calibrated_gap > 0) == labels).mean():.2f} |"
  )
  print("\nMost frequent top word at [MASK]:")
  for template, words in tops.items():
    print(f"- `{template}`: {', '.join(words)}")


if __name__ == "__main__":
  app.run(main)
