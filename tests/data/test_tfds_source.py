"""tfds_documents over `tfds.testing.mock_data` (no TensorFlow, no network, no real dataset), and HAT
training on a "tfds:" corpus through the trainer."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")  # tfds.data_source reads (and mock_data patches) ArrayRecord

from configs import hat as hat_config  # noqa: E402
from hat_jax.data import documents  # noqa: E402
from hat_jax.data.tfds_source import TfdsDocuments, tfds_documents  # noqa: E402
from hat_jax.train import lm_tasks, trainer  # noqa: E402


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
    with pytest.raises(KeyError, match="no feature 'body'.*wikidata_id"):
      tfds_documents("wiki40b/en", "train", data_dir=tmp_path, text_key="body")


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


def tfds_hat_config(data_dir, corpus="tfds:wiki40b/en"):
  config = hat_config.get_config(f"size=test,corpus={corpus}")
  config.data.tfds_data_dir = str(data_dir)
  config.data.eval_batch_size, config.data.eval_batches = 8, 1
  config.train.update(steps=2, batch_size=8, log_every=1, eval_every=2, checkpoint_every=2)  # 8 CPU devices
  return config


def test_hat_trains_on_a_tfds_corpus_and_its_data_state_resumes(tmp_path):
  config = tfds_hat_config(tmp_path / "tfds")
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    result = trainer.train(config, str(workdir))
    assert result["step"] == 2 and np.isfinite(result["eval/loss"])
    # The checkpointed data state, set on a fresh iterator, continues with the uninterrupted third batch.
    saved = json.loads((workdir / "checkpoints" / "2" / "data" / "process_0-of-1.json").read_text())["iterator_state"]
    task = lm_tasks.HATTask(config)
    uninterrupted = task.train_iterator(int(config.seed))
    want = [next(uninterrupted) for _ in range(4)][2:]
    resumed = task.train_iterator(int(config.seed))
    resumed.set_state(saved)
    for w in want:
      got = next(resumed)
      assert got["bytes"].shape == (8, 64)
      assert all(got[k].tobytes() == w[k].tobytes() for k in w)


def test_tfds_corpus_errors(tmp_path):
  with pytest.raises(ValueError, match="names no dataset"):
    documents.load_documents(tfds_hat_config(tmp_path, corpus="tfds:").data, "train")
  with pytest.raises(ValueError, match=r"Unknown data.corpus 'wiki40b'.*'tfds:<name>'"):
    documents.load_documents(tfds_hat_config(tmp_path, corpus="wiki40b").data, "train")
  config = tfds_hat_config(tmp_path)
  with pytest.raises(RuntimeError, match="never downloads"):  # nothing prepared under tmp_path
    lm_tasks.HATTask(config).eval_batches()
  config.data.text_key = "body"
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(KeyError, match=r"no feature 'body'.*config.data.text_key"):
      lm_tasks.HATTask(config).train_iterator(0)
