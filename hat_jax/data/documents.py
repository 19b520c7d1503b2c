"""Where a text task's documents come from: `data.corpus` -> a random-access sequence of documents (bytes).

  "toy"            a tiny built-in corpus, so tests and smoke runs need no prepared data
  "english", ...   a corpus of `hat_jax.data.corpora`, prepared by `python -m hat_jax.data prepare NAME`
                   (the whole split in memory)
  "tfds:<name>"    e.g. "tfds:wiki40b/en", "tfds:c4/en:3.1.0": an ArrayRecord TFDS dataset under
                   `data.tfds_data_dir`, read lazily by `tfds_source` (splits `data.tfds_train_split` /
                   `data.tfds_eval_split`, text feature `data.text_key`); tasks stream it (`streaming`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TFDS_PREFIX = "tfds:"

_TOY_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with a single step.",
    "She sells sea shells by the sea shore.", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "All that glitters is not gold; all who wander are not lost.", "To be, or not to be: that is the question.",
    "It was the best of times, it was the worst of times.", "Call me Ishmael. Some years ago, never mind how long.",
)


def toy_documents(split: str, num_docs: int = 64) -> list[bytes]:
  """`num_docs` documents of 2-7 random sentences; "train" and any other split draw different ones."""
  rng = np.random.default_rng(0 if split == "train" else 1)
  docs = []
  for _ in range(num_docs):
    picks = rng.integers(0, len(_TOY_SENTENCES), size=rng.integers(2, 8))
    docs.append(" ".join(_TOY_SENTENCES[i] for i in picks).encode())
  return docs


def is_tfds(corpus: str) -> bool:
  return corpus.startswith(TFDS_PREFIX)


def load_documents(data_cfg, split: str) -> Sequence[bytes]:
  """Documents of `split` ("train" or "validation") of `data_cfg.corpus`; lazy for TFDS corpora."""
  corpus = data_cfg.corpus
  if corpus == "toy":
    return toy_documents(split, data_cfg.get("toy_docs", 64))
  if is_tfds(corpus):
    from hat_jax.data import tfds_source  # imported lazily: tensorflow_datasets is a heavy, optional import

    name = corpus[len(TFDS_PREFIX):]
    if not name:
      raise ValueError(f"data.corpus={corpus!r} names no dataset; expected e.g. 'tfds:wiki40b/en' or "
                       "'tfds:c4/en:3.1.0'.")
    tfds_split = data_cfg.tfds_train_split if split == "train" else data_cfg.tfds_eval_split
    return tfds_source.tfds_documents(name, tfds_split, data_cfg.tfds_data_dir or None, data_cfg.text_key)
  from hat_jax.data import corpora  # imported lazily: only real corpora need it

  if corpus not in corpora.CORPORA:
    raise ValueError(f"Unknown data.corpus {corpus!r}; expected 'toy', one of {', '.join(corpora.CORPORA)} "
                     f"(prepared with `python -m hat_jax.data prepare NAME`), or '{TFDS_PREFIX}<name>' for a "
                     "prepared TFDS dataset (e.g. 'tfds:wiki40b/en').")
  return corpora.load_corpus(corpus, split, cache_dir=data_cfg.get("cache_dir") or None)
