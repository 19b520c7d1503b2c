"""Packed byte/word batches for byte-level LMs (HAT, the byte baseline, Block Transformer).

Documents become one stream: `[BOS] doc [EOD]` each, split into words (BOS and EOD are one-byte words
of their own), or `doc [EOD]` with `bos=False` (`data.bos`; the released TFree-HAT framing: a document then
starts with its text's first word, at position 0, and its first byte is never a target). A training row is a contiguous run of whole words holding at most `seq_bytes` bytes and
`seq_words` words; the packer fills rows greedily, so nothing is dropped and words never straddle rows.
Inside a row, each document (or the tail of one continued from the previous row) is a segment; nothing
attends across segments, and the prediction from a document's EOD to the next document's first byte (its
BOS, or its text's first byte without BOS) is masked.

Row layout (numpy, S = seq_bytes, W = seq_words; padding has segment id 0):
  bytes, targets           int32 [S]   input byte, next byte within the segment
  loss_mask                float32 [S] 1 where `targets` is a real prediction
  segment_ids, positions   int32 [S]   document index in the row (1..), byte position in the segment
  word_ids                 int32 [S]   index of the word holding the byte
  word_starts, word_lengths, word_segment_ids, word_positions   int32 [W]

The iterator is a grain `DatasetIterator`: batch i of a run is a pure function of (seed, i), and its
state (`get_state`/`set_state`) goes into checkpoints so a resumed run sees the same data.

This module encodes a whole split in memory (fine for the prepared corpora, tens of MB). Splits that do
not fit (TFDS c4, wiki40b) go through `hat_jax.data.streaming`, which builds the same rows with
`make_row` from a stream of documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import grain
import numpy as np

from hat_jax.data.batching import per_process_batch_size
from hat_jax.data.splitter import BOS, EOD, PAD, SPECIAL_BYTES, WordSplitter


@dataclasses.dataclass(frozen=True)
class Stream:
  """A split's documents as one byte stream cut into words."""

  data: np.ndarray  # uint8 [total_bytes]
  word_lengths: np.ndarray  # int32 [num_words]
  doc_start: np.ndarray  # bool [num_words]: word starts a document (its BOS, or without BOS its first word)

  @property
  def word_offsets(self) -> np.ndarray:  # int64 [num_words + 1]
    return np.concatenate([[0], np.cumsum(self.word_lengths, dtype=np.int64)])


def check_document(doc: bytes, index: int) -> None:
  if not isinstance(doc, (bytes, bytearray)):
    raise TypeError(f"document {index} is {type(doc).__name__}; documents must be bytes (UTF-8 encoded text).")
  bad = SPECIAL_BYTES.intersection(doc)
  if bad:
    raise ValueError(
        f"document {index} contains byte(s) {sorted(bad)} reserved for special tokens (BOS/EOD/PAD never occur "
        "in valid UTF-8). Decode and re-encode the text as UTF-8, e.g. bytes.decode('utf-8', 'replace').encode().")


def encode_documents(docs: Sequence[bytes], splitter: WordSplitter, first_index: int = 0, *,
                     bos: bool = True) -> Stream:
  """`[BOS] doc [EOD]` per document (`doc [EOD]` with `bos=False`). `first_index`: the index of `docs[0]` in
  its split, so errors name the right document. With the splitter's special tokens (a converted release's
  {"<|eot_id|>": 192}) each token's text in a document becomes its one byte, as the released model sees it."""
  if not docs:
    raise ValueError("no documents to encode: the corpus split is empty.")
  head = [bytes([BOS])] if bos else []
  pieces, lengths, starts = [], [], []
  for i, doc in enumerate(docs, first_index):
    check_document(doc, i)
    text_words = splitter.split(bytes(doc))
    words = [1] * len(head) + [len(w) for w in text_words] + [1]
    # The words joined, not the document: a special token's text (e.g. "<|eot_id|>") is one byte to the model.
    pieces += [*head, *text_words, bytes([EOD])]
    lengths += words
    starts += [True] + [False] * (len(words) - 1)  # the document's first word (BOS, or the text's, or EOD)
  return Stream(np.frombuffer(b"".join(pieces), np.uint8), np.asarray(lengths, np.int32), np.asarray(starts, bool))


def document_start(prompt: bytes, bos: bool = True) -> bytes:
  """The first bytes of a document whose text starts with `prompt`, framed as `encode_documents` frames it:
  BOS + prompt, or the prompt alone with `bos=False`. A sampler conditions on these, so without BOS an
  empty prompt is an error: there is nothing to condition the first byte on."""
  if not bos and not prompt:
    raise ValueError(
        "an empty prompt has nothing to condition on when documents have no BOS byte (data.bos=False, the "
        "released TFree-HAT framing): pass at least the text's first byte as the prompt (for a released chat "
        "model, e.g. its template's start '<|begin_of_text|>').")
  return (bytes([BOS]) if bos else b"") + bytes(prompt)


def check_row_size(seq_bytes: int, seq_words: int) -> None:
  if seq_words < 2 or seq_bytes < 2:
    raise ValueError(f"seq_bytes and seq_words must be >= 2, got {seq_bytes} and {seq_words}.")


def check_words_fit(word_lengths: np.ndarray, seq_bytes: int) -> None:
  if word_lengths.size and word_lengths.max() > seq_bytes:
    raise ValueError(f"a word of {word_lengths.max()} bytes does not fit seq_bytes={seq_bytes}; "
                     "raise seq_bytes or lower max_word_bytes.")


def pack_rows(word_lengths: np.ndarray, seq_bytes: int, seq_words: int) -> np.ndarray:
  """Greedy packing of whole words; returns row boundaries in word indices, int64 [num_rows + 1]."""
  check_words_fit(word_lengths, seq_bytes)
  offsets = np.concatenate([[0], np.cumsum(word_lengths, dtype=np.int64)])
  bounds, start, n = [0], 0, len(word_lengths)
  while start < n:
    start = words_that_fit(offsets, start, seq_bytes, seq_words)
    bounds.append(start)
  return np.asarray(bounds, np.int64)


def words_that_fit(offsets: np.ndarray, lo: int, bytes_left: int, words_left: int) -> int:
  """The packing rule: end index of the longest run of whole words from word `lo` that holds at most
  `bytes_left` bytes and `words_left` words. offsets: int64 [num_words + 1] byte offsets of the words."""
  by_bytes = int(np.searchsorted(offsets, offsets[lo] + bytes_left, side="right")) - 1
  return min(lo + words_left, by_bytes, len(offsets) - 1)


def make_row(stream: Stream, offsets: np.ndarray, first_word: int, end_word: int, seq_bytes: int,
             seq_words: int) -> dict[str, np.ndarray]:
  num_words = end_word - first_word
  lengths = stream.word_lengths[first_word:end_word].astype(np.int32)
  byte_lo, byte_hi = offsets[first_word], offsets[end_word]
  num_bytes = int(byte_hi - byte_lo)

  word_seg = np.cumsum(stream.doc_start[first_word:end_word]).astype(np.int32)
  word_seg += 0 if stream.doc_start[first_word] else 1  # a row starting mid-document opens segment 1
  seg_first_word = np.maximum.accumulate(np.where(np.r_[True, word_seg[1:] != word_seg[:-1]], np.arange(num_words), 0))
  word_starts = (offsets[first_word:end_word] - byte_lo).astype(np.int32)
  word_ids = np.repeat(np.arange(num_words, dtype=np.int32), lengths)
  seg = word_seg[word_ids]
  seg_first_byte = word_starts[seg_first_word][word_ids]

  row = {
      "bytes": np.full(seq_bytes, PAD, np.int32),
      "targets": np.full(seq_bytes, PAD, np.int32),
      "loss_mask": np.zeros(seq_bytes, np.float32),
      "segment_ids": np.zeros(seq_bytes, np.int32),
      "positions": np.zeros(seq_bytes, np.int32),
      "word_ids": np.zeros(seq_bytes, np.int32),
      "word_starts": np.zeros(seq_words, np.int32),
      "word_lengths": np.zeros(seq_words, np.int32),
      "word_segment_ids": np.zeros(seq_words, np.int32),
      "word_positions": np.zeros(seq_words, np.int32),
  }
  data = stream.data[byte_lo:byte_hi].astype(np.int32)
  row["bytes"][:num_bytes] = data
  row["targets"][:num_bytes - 1] = data[1:]
  row["loss_mask"][:num_bytes - 1] = seg[1:] == seg[:-1]
  row["segment_ids"][:num_bytes] = seg
  row["positions"][:num_bytes] = np.arange(num_bytes) - seg_first_byte
  row["word_ids"][:num_bytes] = word_ids
  row["word_starts"][:num_words] = word_starts
  row["word_lengths"][:num_words] = lengths
  row["word_segment_ids"][:num_words] = word_seg
  row["word_positions"][:num_words] = np.arange(num_words) - seg_first_word
  return row


class PackedRows:
  """Random-access source of packed rows (a grain MapDataset source)."""

  def __init__(self, stream: Stream, seq_bytes: int, seq_words: int):
    check_row_size(seq_bytes, seq_words)
    self.stream, self.seq_bytes, self.seq_words = stream, seq_bytes, seq_words
    self.offsets = stream.word_offsets
    self.bounds = pack_rows(stream.word_lengths, seq_bytes, seq_words)

  def __len__(self) -> int:
    return len(self.bounds) - 1

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return make_row(self.stream, self.offsets, int(self.bounds[index]), int(self.bounds[index + 1]),
                    self.seq_bytes, self.seq_words)

  @property
  def fill(self) -> tuple[float, float]:
    """Mean fraction of byte and word slots that hold data (packing efficiency)."""
    rows = len(self)
    return (float(self.offsets[-1]) / (rows * self.seq_bytes), float(self.bounds[-1]) / (rows * self.seq_words))


def cached_stream(docs: Sequence[bytes], splitter: WordSplitter, cache_dir: str | None, tag: str, *,
                  bos: bool = True) -> Stream:
  """encode_documents, memoised on disk (splitting a 20 MB corpus takes seconds, not worth repeating)."""
  if cache_dir is None:
    return encode_documents(docs, splitter, bos=bos)
  digest = hashlib.sha256()
  for doc in docs:
    digest.update(len(doc).to_bytes(8, "little"))
    digest.update(doc)
  if splitter.special_tokens:  # they change the words (keys without them stay as they were)
    digest.update(repr(sorted(splitter.special_tokens.items())).encode())
  framing = "" if bos else "-nobos"
  key = f"{tag}-{splitter.rule}-{splitter.max_word_bytes}{framing}-{digest.hexdigest()[:16]}.npz"
  path = os.path.join(cache_dir, "streams", key)
  if os.path.exists(path):
    with np.load(path) as f:
      return Stream(f["data"], f["word_lengths"], f["doc_start"])
  stream = encode_documents(docs, splitter, bos=bos)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + f".tmp{os.getpid()}.npz"
  np.savez(tmp, data=stream.data, word_lengths=stream.word_lengths, doc_start=stream.doc_start)
  os.replace(tmp, path)
  return stream


def train_iterator(rows: PackedRows, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Shuffled, repeated, per-process batches; checkpointable via get_state/set_state."""
  local_batch = per_process_batch_size(batch_size, process_count)
  if len(rows) < batch_size:
    raise ValueError(f"the training split packs into only {len(rows)} rows, fewer than batch_size={batch_size}; "
                     "use a smaller batch or seq_bytes, or more data.")
  ds = grain.MapDataset.source(rows).seed(seed).shuffle().repeat(None)
  ds = ds[process_index::process_count].batch(local_batch, drop_remainder=True)
  return iter(ds.to_iter_dataset())


def eval_batches(rows: PackedRows, batch_size: int, num_batches: int) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` full batches of a split, unshuffled (a fixed validation set)."""
  num_batches = min(num_batches, len(rows) // batch_size)
  if num_batches == 0:
    raise ValueError(f"the validation split packs into {len(rows)} rows, fewer than batch_size={batch_size}.")
  ds = grain.MapDataset.source(rows).batch(batch_size, drop_remainder=True)
  return [ds[i] for i in range(num_batches)]
