"""The streaming packer: same rows as the in-memory packer, exact resume, per-process document shares."""

import json

import pytest

from hat_jax.data import pipeline, streaming
from hat_jax.data.splitter import WordSplitter

DOCS = [b"Hello, world! This is a test.", b"", "Zweites Dokument \u00fcber K\u00e4se.".encode(), b"x" * 40,
        b"A short one.", b"And a last, somewhat longer document to end the list with."]
SPLITTER = WordSplitter("tfree", 8)


def assert_rows_equal(got, want):
  assert got.keys() == want.keys()
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    assert got[k].tobytes() == want[k].tobytes(), k


def one_pass(docs, seq_bytes, seq_words, bos=True):
  return list(streaming.PackIterDataset(streaming.document_dataset(docs, seed=None, num_epochs=1), SPLITTER,
                                        seq_bytes, seq_words, bos=bos))


# Word- and byte-limited rows, rows that end exactly at a document's EOD, single-word rows; documents
# framed with BOS and without (data.bos=False).
@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("seq_bytes, seq_words", [(32, 10), (16, 6), (8, 2), (64, 3), (200, 80)])
def test_unshuffled_rows_equal_packed_rows(seq_bytes, seq_words, bos):
  want = pipeline.PackedRows(pipeline.encode_documents(DOCS, SPLITTER, bos=bos), seq_bytes, seq_words)
  got = one_pass(DOCS, seq_bytes, seq_words, bos)
  assert len(got) == len(want)
  for i, row in enumerate(got):
    assert_rows_equal(row, want[i])


@pytest.mark.parametrize("bos", [True, False])
def test_eval_batches_are_the_first_packed_batches(bos):
  rows = pipeline.PackedRows(pipeline.encode_documents(DOCS, SPLITTER, bos=bos), 16, 6)
  got = streaming.eval_batches(DOCS, SPLITTER, 16, 6, batch_size=3, num_batches=2, bos=bos)
  want = pipeline.eval_batches(rows, batch_size=3, num_batches=2)
  assert len(got) == 2
  for g, w in zip(got, want):
    assert_rows_equal(g, w)
  with pytest.raises(ValueError, match="fewer rows than eval batch_size=1000"):
    streaming.eval_batches(DOCS, SPLITTER, 16, 6, batch_size=1000, num_batches=2)


@pytest.mark.parametrize("skip, bos", [(0, True), (1, True), (3, True), (7, True), (3, False)])
def test_resume_from_state_yields_the_same_batches(skip, bos):
  it = streaming.train_iterator(DOCS, SPLITTER, 16, 6, batch_size=2, seed=3, bos=bos)
  for _ in range(skip):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
  want = [next(it) for _ in range(6)]
  resumed = streaming.train_iterator(DOCS, SPLITTER, 16, 6, batch_size=2, seed=3, bos=bos)
  resumed.set_state(state)
  for w in want:
    assert_rows_equal(next(resumed), w)
  assert resumed.get_state() == it.get_state()


def test_state_points_into_the_current_document():
  it = streaming.train_iterator([b"x" * 40], SPLITTER, 16, 6, batch_size=1, seed=0)
  next(it)  # BOS + 5 words of 8 bytes do not fit 16 bytes: one document spans several rows
  assert it.get_state() == {"source": {"next_index": 0}, "words_done": 2}


def test_epochs_are_reshuffled_and_processes_read_disjoint_documents():
  n = len(DOCS)
  order = [i for i, _ in streaming.document_dataset(DOCS, seed=5, num_epochs=2)]
  assert sorted(order[:n]) == sorted(order[n:]) == list(range(n)) and order[:n] != order[n:]
  shares = [[i for i, _ in streaming.document_dataset(DOCS, seed=5, num_epochs=2, process_index=p, process_count=2)]
            for p in range(2)]
  assert sorted(shares[0] + shares[1]) == sorted(order)
  first_epoch = [set(share[:n // 2]) for share in shares]
  assert not first_epoch[0] & first_epoch[1]
  a = next(streaming.train_iterator(DOCS, SPLITTER, 16, 6, batch_size=4, seed=5, process_index=0, process_count=2))
  b = next(streaming.train_iterator(DOCS, SPLITTER, 16, 6, batch_size=4, seed=5, process_index=1, process_count=2))
  assert a["bytes"].shape == (2, 16) and not (a["bytes"] == b["bytes"]).all()
  with pytest.raises(ValueError, match="divisible by the process count 2"):
    streaming.train_iterator(DOCS, SPLITTER, 16, 6, batch_size=3, seed=0, process_count=2)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="document source is empty"):
    streaming.train_iterator([], SPLITTER, 16, 6, batch_size=1, seed=0)
  with pytest.raises(ValueError, match=r"document 1 contains byte\(s\) \[255\]"):
    one_pass([b"fine", b"bad\xff"], 16, 6)
  with pytest.raises(ValueError, match="a word of 8 bytes does not fit seq_bytes=4"):
    one_pass([b"x" * 40], 4, 6)
  it = streaming.train_iterator([b"two words"], SPLITTER, 16, 6, batch_size=1, seed=0)
  it.set_state({"source": {"next_index": 0}, "words_done": 9})
  with pytest.raises(ValueError, match="other data or splitter settings"):
    next(it)
