"""tfds_documents over `tfds.testing.mock_data` (no TensorFlow, no network, no real dataset)."""

from __future__ import annotations

import pickle

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")  # tfds.data_source reads (and mock_data patches) ArrayRecord

from hat_jax.data.tfds_source import TfdsDocuments, tfds_documents  # noqa: E402


@pytest.mark.parametrize("name", ["wiki40b/en", "c4/en"])
def test_mock_documents_are_bytes(tmp_path, name):
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = tfds_documents(name, "train", data_dir=tmp_path)
    assert len(docs) == 5
    items = [docs[i] for i in range(len(docs))]
    assert all(isinstance(d, bytes) and d for d in items)
    assert docs[-1] == items[-1]
    assert docs[1:3] == items[1:3]
    with pytest.raises(IndexError):
      docs[5]


def test_grain_map_dataset_source(tmp_path):
  grain = pytest.importorskip("grain")
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = tfds_documents("wiki40b/en", "train", data_dir=tmp_path)
    ds = grain.MapDataset.source(docs).map(len)
    assert len(ds) == 4 and all(ds[i] == len(docs[i]) for i in range(4))


def test_wrong_text_key_lists_features(tmp_path):
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = tfds_documents("wiki40b/en", "train", data_dir=tmp_path, text_key="body")
    with pytest.raises(KeyError, match="no feature 'body'.*wikidata_id"):
      docs[0]


class _BatchedSource(list):
  """A list with the ArrayRecord-style batched read, recording that it was used."""

  batched_calls = 0

  def __getitems__(self, keys):
    type(self).batched_calls += 1
    return [self[k] for k in keys]


def test_getitems_uses_batched_read_when_present():
  # (tfds' mock source has a broken __getitems__ in 4.9.10, so this is tested on a fake.)
  docs = TfdsDocuments(_BatchedSource([{"text": "a"}, {"text": "b"}, {"text": "c"}]))
  assert docs.__getitems__([2, 0]) == [b"c", b"a"] and _BatchedSource.batched_calls == 1
  assert TfdsDocuments([{"text": "a"}, {"text": "b"}]).__getitems__([1]) == [b"b"]


def test_wrapper_converts_and_pickles():
  docs = TfdsDocuments([{"text": "Grüße"}, {"text": b"raw"}])
  assert docs[0] == "Grüße".encode() and docs[1] == b"raw"
  assert pickle.loads(pickle.dumps(docs))[0] == docs[0]


def test_missing_dataset_does_not_download(tmp_path):
  with pytest.raises(RuntimeError, match="never downloads"):
    tfds_documents("wiki40b/en", "train", data_dir=tmp_path)
