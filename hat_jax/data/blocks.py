"""Block-aligned byte rows: the layout the Block Transformer and its vanilla baseline train and score on.

Every document starts at a block boundary, optionally after `lead` pad tokens (PAD_ID), and is padded to
a block boundary at its end (`aligned_row`). So a block never mixes two documents, the block decoder can
use plain block-level segment ids, and the paper's random first-block padding is just a random lead in
[0, L_B - 1] per document (training only; the paper's evaluation uses L_B - 1). `loss_mask` marks the
target bytes: real bytes outside the first block of their document (the Block Transformer never
predicts a document's first block). The vanilla model is scored on exactly those bytes, so both
models' bits per byte are over the same bytes.

Where rows come from: `DocumentWindows` (training), a deterministic, checkpointable sampler of
single-document windows; `eval_batches` (validation), consecutive windows of each document. Packed
rows from elsewhere (several documents per row, not block aligned, e.g. the byte pipeline) go through
`block_align`, which re-lays them out; bytes pushed past the row end by the padding are dropped.
"""

from __future__ import annotations

import numpy as np

from hat_jax.data.batching import stack_rows
from hat_jax.data.iterators import Batch, StepIndexedBatches

# The pad token of byte rows: one past the 256 byte values (the models' `pad_id` for vocab_size 256,
# an input-only row of their embedding tables).
PAD_ID = 256


def aligned_row(docs: list[np.ndarray], seq_len: int, block_len: int, lead_pads: list[int],
                pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
  """Lays documents (uint8/int arrays) into one row of seq_len tokens, each starting at a block boundary.

  Returns tokens, segment_ids (1.. per document, 0 = padding after the last document), positions
  (within document, counting its lead pads) and loss_mask (real bytes outside the document's first block).
  """
  if seq_len % block_len:
    raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_len ({block_len}).")
  tokens = np.full(seq_len, pad_id, np.int32)
  segment_ids = np.zeros(seq_len, np.int32)
  positions = np.zeros(seq_len, np.int32)
  loss_mask = np.zeros(seq_len, np.float32)
  at = 0
  for i, (doc, lead) in enumerate(zip(docs, lead_pads)):
    if not 0 <= lead < block_len:
      raise ValueError(f"lead padding must be in [0, block_len), got {lead}.")
    if at >= seq_len:
      break
    n = min(len(doc), seq_len - at - lead)
    span = -(-(lead + max(n, 0)) // block_len) * block_len  # padded to a block boundary
    span = min(span, seq_len - at)
    if n > 0:
      tokens[at + lead:at + lead + n] = doc[:n]
    segment_ids[at:at + span] = i + 1
    positions[at:at + span] = np.arange(span)
    if n > 0:
      is_byte = np.zeros(span, bool)
      is_byte[lead:lead + n] = True
      loss_mask[at:at + span] = is_byte & (np.arange(span) >= block_len)
    at += span
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions, loss_mask=loss_mask)


def block_align(tokens: np.ndarray, segment_ids: np.ndarray, block_len: int, rng: np.random.Generator | None,
                lead_pad: int | None = None, seq_len: int | None = None) -> dict[str, np.ndarray]:
  """Re-lays packed rows [B, S] (documents = runs of equal nonzero segment ids) block aligned.

  lead_pad: fixed pad count before every document; None draws it uniformly from [0, L_B - 1] per
  document with `rng` (the paper's random first-block padding).
  """
  tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
  seq_len = tokens.shape[1] if seq_len is None else seq_len
  rows = []
  for toks, segs in zip(tokens, segment_ids):
    change = np.flatnonzero(np.diff(segs) != 0) + 1
    bounds = np.concatenate([[0], change, [len(segs)]])
    docs = [toks[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if segs[a] != 0]
    if lead_pad is None:
      if rng is None:
        raise ValueError("random first-block padding (lead_pad=None) needs an rng.")
      leads = list(rng.integers(0, block_len, size=len(docs)))
    else:
      leads = [lead_pad] * len(docs)
    rows.append(aligned_row(docs, seq_len, block_len, leads))
  return stack_rows(rows)


class DocumentWindows(StepIndexedBatches):
  """Infinite batches of block-aligned single-document windows, deterministic in (seed, step, shard).

  Each row takes a uniformly random document (weighted by length) and offset, and lays it out with a
  lead padding (random in [0, L_B - 1] when `random_pad`, else 0). Checkpointable: the state is the step.
  """

  def __init__(self, docs: list[bytes], batch_size: int, seq_len: int, block_len: int, seed: int,
               random_pad: bool, shard: tuple[int, int] = (0, 1)):
    if not docs:
      raise ValueError("DocumentWindows needs at least one document.")
    super().__init__(seed, shard)
    self.docs = [np.frombuffer(d, np.uint8) for d in docs]
    lengths = np.array([len(d) for d in self.docs], np.float64)
    self.weights = lengths / lengths.sum()
    self.batch_size, self.seq_len, self.block_len, self.random_pad = batch_size, seq_len, block_len, random_pad

  def make_batch(self, rng: np.random.Generator) -> Batch:
    rows = []
    for _ in range(self.batch_size):
      doc = self.docs[rng.choice(len(self.docs), p=self.weights)]
      lead = int(rng.integers(0, self.block_len)) if self.random_pad else 0
      start = int(rng.integers(0, max(1, len(doc) - (self.seq_len - lead) + 1)))
      rows.append(aligned_row([doc[start:]], self.seq_len, self.block_len, [lead]))
    return stack_rows(rows)


def eval_rows(docs: list[bytes], seq_len: int, block_len: int, max_rows: int) -> list[dict[str, np.ndarray]]:
  """Consecutive non-overlapping windows of each document, each after L_B - 1 pads (the paper's eval)."""
  lead = block_len - 1
  stride = seq_len - lead
  rows = []
  for d in docs:
    doc = np.frombuffer(d, np.uint8)
    for start in range(0, max(1, len(doc) - block_len), stride):
      rows.append(aligned_row([doc[start:]], seq_len, block_len, [lead]))
      if len(rows) == max_rows:
        return rows
  return rows


def eval_batches(docs: list[bytes], seq_len: int, block_len: int, max_rows: int, batch_size: int) -> list[Batch]:
  """`eval_rows` in batches of `batch_size` rows (the last one may be smaller)."""
  rows = eval_rows(docs, seq_len, block_len, max_rows)
  return [stack_rows(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
