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


# -- documents without BOS (data.bos=False, the released TFree-HAT framing) ------------------------------
def test_documents_without_bos_are_text_then_eod():
  splitter = WordSplitter("tfree", 8)
  stream = pipeline.encode_documents(DOCS, splitter, bos=False)
  assert bytes(stream.data) == b"".join(d + bytes([EOD]) for d in DOCS)
  words = [w for d in DOCS for w in [*splitter.split(d), bytes([EOD])]]
  assert stream.word_lengths.tolist() == [len(w) for w in words]
  firsts = [i == 0 for d in DOCS for i in range(len(splitter.split(d)) + 1)]  # a document's first word (EOD if empty)
  assert stream.doc_start.tolist() == firsts
  assert pipeline.encode_documents([b""], splitter, bos=False).data.tolist() == [EOD]


@pytest.mark.parametrize("seq_bytes, seq_words", [(32, 10), (16, 6), (200, 80)])
def test_rows_without_bos_segment_each_document_from_its_first_word(seq_bytes, seq_words):
  splitter = WordSplitter("tfree", 8)
  rows = pipeline.PackedRows(pipeline.encode_documents(DOCS, splitter, bos=False), seq_bytes, seq_words)
  # Each document (or its continuation) is a segment whose positions start at 0 and whose first byte is no
  # target: the prediction from EOD to the next document's first byte is masked as EOD -> BOS is with BOS.
  docs = [bytearray()]
  seen_targets = 0
  for i in range(len(rows)):
    r = rows[i]
    n = int((r["segment_ids"] > 0).sum())
    assert BOS not in r["bytes"][:n]
    for s in range(1, r["segment_ids"].max() + 1):
      at = np.flatnonzero(r["segment_ids"] == s)
      assert (r["positions"][at] == np.arange(len(at))).all()
      assert (r["loss_mask"][at[:-1]] == 1).all() and r["loss_mask"][at[-1]] == 0
      assert (r["targets"][at[:-1]] == r["bytes"][at[1:]]).all()
      words = np.flatnonzero(r["word_segment_ids"] == s)
      assert (r["word_positions"][words] == np.arange(len(words))).all()
      assert r["word_starts"][words[0]] == at[0]
      seen_targets += len(at) - 1
      for b in r["bytes"][at]:
        docs[-1].append(int(b))
        if b == EOD:
          docs.append(bytearray())
  assert [bytes(d) for d in docs[:-1]] == [d + bytes([EOD]) for d in DOCS]
  # Targets: every byte of `doc [EOD]` but the first (one fewer per document than with BOS), less one per
  # row that starts inside a document (its first byte is predicted in no row, as with BOS).
  mid_document = sum(rows[i - 1]["bytes"][int((rows[i - 1]["segment_ids"] > 0).sum()) - 1] != EOD
                     for i in range(1, len(rows)))
  assert sum(int(rows[i]["loss_mask"].sum()) for i in range(len(rows))) == sum(len(d) for d in DOCS) - mid_document
  assert seen_targets == sum(len(d) for d in DOCS) - mid_document


def test_stream_cache_keeps_bos_framings_apart(tmp_path):
  splitter = WordSplitter()
  a = pipeline.cached_stream(DOCS, splitter, str(tmp_path), "t")
  b = pipeline.cached_stream(DOCS, splitter, str(tmp_path), "t", bos=False)
  assert a.data[0] == BOS and b.data.tobytes() == pipeline.encode_documents(DOCS, splitter, bos=False).data.tobytes()
  assert (b.doc_start == pipeline.encode_documents(DOCS, splitter, bos=False).doc_start).all()
  assert len(list((tmp_path / "streams").iterdir())) == 2


def test_document_start_without_bos_needs_a_prompt():
  assert pipeline.document_start(b"Hi") == bytes([BOS]) + b"Hi" and pipeline.document_start(b"") == bytes([BOS])
  assert pipeline.document_start(b"Hi", bos=False) == b"Hi"
  with pytest.raises(ValueError, match=r"empty prompt has nothing to condition on .*data.bos=False.*first byte"):
    pipeline.document_start(b"", bos=False)


def test_special_token_text_becomes_its_byte_and_lengths_match():
  """A converted release's splitter maps "<|eot_id|>" to byte 192: the stream holds that byte (not the
  10-byte text), so the word lengths add up to the stored bytes and rows stay aligned."""
  splitter = WordSplitter("tfree", 24, {"<|eot_id|>": 192})
  stream = pipeline.encode_documents([b"a<|eot_id|>b c"], splitter, bos=False)
  assert bytes(stream.data) == b"a\xc0b c" + bytes([EOD])
  assert int(stream.word_lengths.sum()) == len(stream.data)
  assert [bytes(stream.data[o:o + n]) for o, n in zip(stream.word_offsets[:-1], stream.word_lengths)] == (
      splitter.split(b"a<|eot_id|>b c") + [bytes([EOD])])
