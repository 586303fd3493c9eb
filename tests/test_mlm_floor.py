"""benchmarks/mlm_floor's embedding geometry: mean cosines on vectors with known answers."""

import numpy as np
import pytest

from benchmarks.mlm_floor import embedding_geometry, mean_cosine


def test_mean_cosine_over_distinct_pairs():
  # pairs: (a, b) = 1, (a, c) = 0, (b, c) = 0 -> mean 1/3; the scale of a row does not count
  vectors = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
  assert mean_cosine(vectors) == pytest.approx(1 / 3)
  assert mean_cosine(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


def test_bands_follow_corpus_frequency_and_unseen_pieces_come_last():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(4200, 16))
  common = rng.normal(size=16)
  counts = np.zeros(4200, np.int64)
  counts[:1500] = np.arange(1500, 0, -1)  # 1,500 seen pieces, the first the most frequent
  embeddings[100:1000] = common + 0.01 * rng.normal(size=(900, 16))  # ranks 101-1000 collapsed
  rows = embedding_geometry(embeddings, counts)
  bands = {row.split("|")[1].strip(): row.split("|") for row in rows[2:]}
  assert list(bands) == ["ranks 1-100", "ranks 101-1000", "ranks 1001-1500", "never in the corpus"]
  assert int(bands["never in the corpus"][2].replace(",", "")) == 2700
  assert float(bands["ranks 101-1000"][4]) > 0.99
  assert abs(float(bands["ranks 1-100"][4])) < 0.05
