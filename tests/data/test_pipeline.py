import numpy as np
import pytest

from hat_jax.data import pipeline
from hat_jax.data.splitter import BOS, EOD, PAD, WordSplitter

DOCS = [b"Hello, world! This is a test.", b"", "Zweites Dokument \u00fcber K\u00e4se.".encode(), b"x" * 40]


def _rows(seq_bytes=32, seq_words=10, max_word_bytes=8):
  splitter = WordSplitter("tfree", max_word_bytes)
  return pipeline.PackedRows(pipeline.encode_documents(DOCS, splitter), seq_bytes, seq_words), splitter


def test_rows_cover_the_stream_exactly_once_in_order():
  rows, splitter = _rows()
  stream = b"".join(bytes([BOS]) + d + bytes([EOD]) for d in DOCS)
  got = b"".join(bytes(r["bytes"][r["segment_ids"] > 0].astype(np.uint8)) for r in (rows[i] for i in range(len(rows))))
  assert got == stream
  words = [bytes([BOS]) if i == 0 else w for d in DOCS for i, w in enumerate([b"\x00", *splitter.split(d), b"\x00"])]
  expected_lengths = [1 if w == b"\x00" else len(w) for w in words]
  got_lengths = [l for i in range(len(rows)) for l in rows[i]["word_lengths"] if l > 0]
  assert got_lengths == expected_lengths


def test_row_fields_are_consistent():
  rows, _ = _rows()
  for i in range(len(rows)):
    r = rows[i]
    n = int((r["segment_ids"] > 0).sum())
    assert n <= 32 and int((r["word_lengths"] > 0).sum()) <= 10
    # word_ids / starts / lengths agree
    for w, (start, length) in enumerate(zip(r["word_starts"], r["word_lengths"])):
      if length:
        assert (r["word_ids"][start:start + length] == w).all()
        assert (r["segment_ids"][start:start + length] == r["word_segment_ids"][w]).all()
    # targets are the next byte inside a segment; the EOD -> next-document prediction is masked
    for t in range(n - 1):
      same = r["segment_ids"][t] == r["segment_ids"][t + 1]
      assert r["loss_mask"][t] == float(same)
      assert r["targets"][t] == r["bytes"][t + 1]
      if r["bytes"][t] == EOD:
        assert r["loss_mask"][t] == 0
    assert r["loss_mask"][n - 1:].sum() == 0 and (r["bytes"][n:] == PAD).all()
    # positions restart at each document
    starts = np.flatnonzero(r["bytes"][:n] == BOS)
    for s in starts:
      assert r["positions"][s] == 0


def test_empty_document_is_bos_eod():
  stream = pipeline.encode_documents([b""], WordSplitter())
  assert stream.data.tolist() == [BOS, EOD] and stream.word_lengths.tolist() == [1, 1]


def test_reserved_bytes_in_documents_are_rejected():
  with pytest.raises(ValueError, match="reserved for special tokens"):
    pipeline.encode_documents([b"ok", b"bad\xc0"], WordSplitter())
  with pytest.raises(TypeError, match="must be bytes"):
    pipeline.encode_documents(["text"], WordSplitter())
  with pytest.raises(ValueError, match="empty"):
    pipeline.encode_documents([], WordSplitter())


def test_word_longer_than_row_is_an_error():
  with pytest.raises(ValueError, match="does not fit"):
    pipeline.pack_rows(np.array([3, 9, 2]), seq_bytes=8, seq_words=4)


def test_iterator_state_resumes_exactly():
  rows, _ = _rows(seq_bytes=16, seq_words=6)
  it = pipeline.train_iterator(rows, batch_size=2, seed=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = pipeline.train_iterator(rows, batch_size=2, seed=3)
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    assert all((got[k] == want[k]).all() for k in want)


def test_per_process_slices_are_disjoint():
  rows, _ = _rows(seq_bytes=16, seq_words=6)
  a = next(pipeline.train_iterator(rows, 4, seed=0, process_index=0, process_count=2))
  b = next(pipeline.train_iterator(rows, 4, seed=0, process_index=1, process_count=2))
  assert a["bytes"].shape == (2, 16) and not (a["bytes"] == b["bytes"]).all()


def test_batch_larger_than_split_is_an_error():
  rows, _ = _rows()
  with pytest.raises(ValueError, match="fewer than batch_size"):
    pipeline.train_iterator(rows, batch_size=1000, seed=0)


def test_stream_cache_round_trip(tmp_path):
  splitter = WordSplitter()
  a = pipeline.cached_stream(DOCS, splitter, str(tmp_path), "t")
  b = pipeline.cached_stream(DOCS, splitter, str(tmp_path), "t")
  assert (a.data == b.data).all() and (a.word_lengths == b.word_lengths).all()
  assert len(list((tmp_path / "streams").iterdir())) == 1
