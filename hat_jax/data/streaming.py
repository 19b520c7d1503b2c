"""Packed rows from a stream of documents, for splits that do not fit in memory (TFDS c4, wiki40b).

Rows are exactly `pipeline.make_row` rows (same keys, dtypes and segments), packed by the same greedy
rule as `pipeline.pack_rows` (`pipeline.words_that_fit`): a row takes whole words until the next one
would exceed `seq_bytes` bytes or `seq_words` words. Unshuffled, one pass over a document list gives byte for byte the rows of
`pipeline.PackedRows` over the same list, but only the documents of the row being filled are split and
held (plus grain's read-ahead of raw documents).

Document order: a permutation of the split per epoch (grain's index shuffle, seeded with seed + epoch),
repeated forever, and cut per process like `pipeline.train_iterator`: process p of P takes positions
p, p + P, ... of the global order, so processes read different documents.

Iterator state (JSON, saved per process in checkpoints):
  {"source": <state of grain's document iterator before it returned the current document>,
   "words_done": <words of that document already packed into earlier rows>}
`set_state` rewinds the document iterator and re-splits that document when the next row is built
(splitting is deterministic), so a resumed iterator yields exactly the uninterrupted one's batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from hat_jax.data import pipeline
from hat_jax.data.batching import per_process_batch_size
from hat_jax.data.splitter import WordSplitter


class _IndexedDocument:
  """index -> (index, docs[index]): the index travels with the text so errors can name the document."""

  def __init__(self, docs: Sequence[bytes]):
    self.docs = docs

  def __call__(self, index: int) -> tuple[int, bytes]:
    return index, self.docs[index]


def document_dataset(docs: Sequence[bytes], *, seed: int | None, num_epochs: int | None, process_index: int = 0,
                     process_count: int = 1) -> grain.IterDataset:
  """(index, document) pairs: shuffled per epoch by `seed` (None: in order), `num_epochs` passes (None:
  forever), this process's share. Documents are read ahead by grain's thread pool (random access on
  ArrayRecord is latency-bound); its state is the position in the global order."""
  if not len(docs):
    raise ValueError("the document source is empty: check the split name and that the dataset holds examples.")
  ds = grain.MapDataset.range(len(docs))
  if seed is not None:
    ds = ds.seed(seed).shuffle()
  ds = ds.repeat(num_epochs)[process_index::process_count]
  return ds.map(_IndexedDocument(docs)).to_iter_dataset()


class PackIterDataset(grain.IterDataset):
  """Greedy whole-word packing of an IterDataset of (index, document) pairs into `make_row` rows; documents
  framed as `pipeline.encode_documents` frames them (`bos`)."""

  def __init__(self, parent: grain.IterDataset, splitter: WordSplitter, seq_bytes: int, seq_words: int, *,
               bos: bool = True):
    super().__init__(parent)
    pipeline.check_row_size(seq_bytes, seq_words)
    self._splitter, self._seq_bytes, self._seq_words, self._bos = splitter, seq_bytes, seq_words, bos

  def __iter__(self) -> grain.DatasetIterator:
    return _PackIterator(self._parent.__iter__(), self._splitter, self._seq_bytes, self._seq_words, bos=self._bos)

  def __str__(self) -> str:
    return f"PackIterDataset(seq_bytes={self._seq_bytes}, seq_words={self._seq_words})"


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, splitter: WordSplitter, seq_bytes: int, seq_words: int, *,
               bos: bool = True):
    super().__init__(parent)
    self._splitter, self._seq_bytes, self._seq_words, self._bos = splitter, seq_bytes, seq_words, bos
    self._doc: pipeline.Stream | None = None  # [BOS] doc [EOD] (or doc [EOD]) of the document being packed
    self._offsets = np.zeros(1, np.int64)  # int64 [num_words + 1] of self._doc
    self._doc_source_state: dict[str, Any] = {}  # parent state before it returned self._doc
    self._cursor = 0  # words of self._doc already in rows
    self._resume_words = 0  # set_state: words to skip in the next document read

  def _doc_words_left(self) -> int:
    return 0 if self._doc is None else len(self._offsets) - 1 - self._cursor

  def _read_document(self) -> None:
    """Next document from the parent (raises StopIteration at the end of a finite source)."""
    state = self._parent.get_state()
    index, text = next(self._parent)
    doc = pipeline.encode_documents([text], self._splitter, first_index=index, bos=self._bos)
    pipeline.check_words_fit(doc.word_lengths, self._seq_bytes)
    if self._resume_words > len(doc.word_lengths):
      raise ValueError(
          f"iterator state says {self._resume_words} words of document {index} were packed, but it splits into "
          f"{len(doc.word_lengths)} words: the checkpoint was written with other data or splitter settings "
          "(corpus, split, split_rule, max_word_bytes, bos). Resume with the original data config or a fresh workdir.")
    self._doc, self._offsets, self._doc_source_state = doc, doc.word_offsets, state
    self._cursor, self._resume_words = self._resume_words, 0

  def __next__(self) -> dict[str, np.ndarray]:
    pieces = []  # (document Stream, its word offsets, first word, end word) in row order
    num_words = num_bytes = 0
    while num_words < self._seq_words and num_bytes < self._seq_bytes:
      if not self._doc_words_left():
        try:
          self._read_document()
        except StopIteration:
          if pieces:  # a finite source ends with a part-filled row, as pack_rows does
            break
          raise
      offsets, lo = self._offsets, self._cursor
      hi = pipeline.words_that_fit(offsets, lo, self._seq_bytes - num_bytes, self._seq_words - num_words)
      if hi > lo:
        pieces.append((self._doc, offsets, lo, hi))
        num_words, num_bytes = num_words + hi - lo, num_bytes + int(offsets[hi] - offsets[lo])
        self._cursor = hi
      if self._doc_words_left():  # the document's next word does not fit: the row is full
        break
    row = _join(pieces)
    return pipeline.make_row(row, row.word_offsets, 0, num_words, self._seq_bytes, self._seq_words)

  def get_state(self) -> dict[str, Any]:
    if self._doc_words_left():
      return {"source": self._doc_source_state, "words_done": self._cursor}
    # Between documents: the next row starts with the parent's next document.
    return {"source": self._parent.get_state(), "words_done": self._resume_words}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["source"])
    self._doc, self._offsets, self._cursor = None, np.zeros(1, np.int64), 0
    self._resume_words = int(state["words_done"])

  def __str__(self) -> str:
    return f"PackIterator(seq_bytes={self._seq_bytes}, seq_words={self._seq_words})"


def _join(pieces: list[tuple[pipeline.Stream, np.ndarray, int, int]]) -> pipeline.Stream:
  """The words [lo, hi) of each piece, concatenated into one small Stream (one row's worth)."""
  data, lengths, starts = [], [], []
  for doc, offsets, lo, hi in pieces:
    data.append(doc.data[offsets[lo]:offsets[hi]])
    lengths.append(doc.word_lengths[lo:hi])
    starts.append(doc.doc_start[lo:hi])
  return pipeline.Stream(np.concatenate(data), np.concatenate(lengths), np.concatenate(starts))


def train_iterator(docs: Sequence[bytes], splitter: WordSplitter, seq_bytes: int, seq_words: int,
                   batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, *, bos: bool = True) -> grain.DatasetIterator:
  """Shuffled, repeated, per-process batches of streamed rows; checkpointable via get_state/set_state."""
  local_batch = per_process_batch_size(batch_size, process_count)
  ds = document_dataset(docs, seed=seed, num_epochs=None, process_index=process_index, process_count=process_count)
  return iter(PackIterDataset(ds, splitter, seq_bytes, seq_words, bos=bos).batch(local_batch, drop_remainder=True))


def eval_batches(docs: Sequence[bytes], splitter: WordSplitter, seq_bytes: int, seq_words: int, batch_size: int,
                 num_batches: int, *, bos: bool = True) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` full batches of one unshuffled pass (a fixed validation set); reads only
  the documents those batches need (plus grain's read-ahead)."""
  ds = PackIterDataset(document_dataset(docs, seed=None, num_epochs=1), splitter, seq_bytes, seq_words, bos=bos)
  batches = list(itertools.islice(ds.batch(batch_size, drop_remainder=True), num_batches))
  if not batches:
    raise ValueError(f"the validation split packs into fewer rows than eval batch_size={batch_size}; "
                     "use a smaller data.eval_batch_size or seq_bytes, or a larger split.")
  return batches
