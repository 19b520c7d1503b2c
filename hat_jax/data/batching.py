"""Host-side batch assembly shared by every task and sampler: a global batch split over processes, rows
stacked into a batch, prompts of any lengths stacked into one padded array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hat_jax.data.iterators import Batch


def per_process_batch_size(batch_size: int, process_count: int) -> int:
  """The rows each process reads of a global batch of `batch_size` (every process reads its own)."""
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} must be divisible by the process count {process_count}.")
  return batch_size // process_count


def stack_rows(rows: Sequence[Batch]) -> Batch:
  """Rows (dicts of equal keys, one example each) -> one batch with a leading batch dimension."""
  if not rows:
    raise ValueError("stack_rows needs at least one row.")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def stack_prompts(prompts: Sequence[Sequence[int] | bytes], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompts of any lengths (bytes or int sequences) -> prompt [B, max_len] int32, right-filled with
  pad_id, and prompt_lengths [B]. The fill is never read as a prompt: consumers mask every slot at or
  after a row's length (segment id 0), so any valid input id serves as pad_id."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError(f"stack_prompts needs at least one prompt and no empty ones, got lengths "
                     f"{[len(p) for p in prompts]}.")
  lengths = np.array([len(p) for p in prompts], np.int32)
  out = np.full((len(prompts), lengths.max()), pad_id, np.int32)
  for row, p in zip(out, prompts):
    row[:len(p)] = np.frombuffer(p, np.uint8) if isinstance(p, (bytes, bytearray)) else np.asarray(p)
  return out, lengths
