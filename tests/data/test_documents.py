"""hat_jax.data.documents: `data.corpus` -> documents (the built-in toy corpus and the routing errors; TFDS
corpora: tests/data/test_tfds_source.py, prepared corpora: tests/data/test_corpora.py)."""

import ml_collections
import pytest

from hat_jax.data import documents


def data_config(corpus):
  return ml_collections.ConfigDict(dict(corpus=corpus, cache_dir="", tfds_data_dir="", tfds_train_split="train",
                                        tfds_eval_split="validation", text_key="text"))


def test_toy_documents_are_deterministic_and_split():
  train = documents.load_documents(data_config("toy"), "train")
  assert len(train) == 64 and all(isinstance(d, bytes) and d for d in train)
  assert train == documents.toy_documents("train")
  assert documents.load_documents(data_config("toy"), "validation") != train
  more = data_config("toy")
  more.toy_docs = 200  # data.toy_docs: a bigger toy corpus, its first 64 documents unchanged
  bigger = documents.load_documents(more, "train")
  assert len(bigger) == 200 and bigger[:64] == train


def test_corpus_routing_errors():
  assert documents.is_tfds("tfds:c4/en") and not documents.is_tfds("english")
  with pytest.raises(ValueError, match="names no dataset"):
    documents.load_documents(data_config("tfds:"), "train")
  with pytest.raises(ValueError, match=r"Unknown data.corpus 'wiki40b'.*'toy'.*'tfds:<name>'"):
    documents.load_documents(data_config("wiki40b"), "train")
