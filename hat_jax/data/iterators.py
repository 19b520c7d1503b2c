"""Checkpointable batch iterators: the protocol every task's training iterator follows, and the one
whose whole state is the step number.

A training iterator is an object with `__next__`, `get_state() -> dict` and `set_state(dict)` (grain's
DatasetIterator satisfies this); the trainer checkpoints its state with the model so that a resumed run
reads exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import numpy as np

Batch = dict[str, Any]


class CheckpointableIterator(Protocol):
  def __next__(self) -> Batch: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


class StepIndexedBatches(abc.ABC):
  """Infinite random batches where batch i is a pure function of (seed, i, shard): the whole iterator
  state is the step, so resuming is exact and costs nothing. Subclasses draw one batch from `rng`."""

  def __init__(self, seed: int, shard: tuple[int, int] = (0, 1)):
    self.seed, self.shard = seed, shard  # shard = (process_index, process_count)
    self.step = 0

  @abc.abstractmethod
  def make_batch(self, rng: np.random.Generator) -> Batch:
    """One per-process batch drawn with `rng` (seeded by (seed, step, *shard))."""

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    rng = np.random.default_rng([self.seed, self.step, *self.shard])
    self.step += 1
    return self.make_batch(rng)

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])
