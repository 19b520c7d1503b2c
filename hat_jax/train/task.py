"""The interface between a model family and the generic trainer (`hat_jax.train.trainer`).

A task owns everything model-specific: how to build the module from `config.model`, where batches
come from, and how a batch turns into a loss. The trainer owns the rest (optimizer, jit, checkpoints,
metrics, eval loop, resume). Tasks are registered by name (`config.task`) in `hat_jax.train.registry`.

Contract:
  * `loss(params, batch, rng)` is pure and jit-able; it returns a scalar loss and a dict of scalar
    metrics (e.g. "bits_per_byte"). Metrics named in `sum_metrics` are summed (not averaged) over
    eval batches, e.g. counts that later normalise other sums.
  * `train_iterator(seed, process_index, process_count)` returns a *checkpointable* iterator: an
    object with `__next__`, `get_state() -> dict` and `set_state(dict)` (grain's DatasetIterator
    satisfies this). Batches are dicts of numpy arrays with a leading per-process batch dimension.
  * `eval_batches()` yields a fixed, finite list of batches (same every call).
  * `units_per_batch(batch)` counts the throughput unit (`unit`, e.g. "bytes") in a batch.
  * `batch_spec`, `stub_frozen_inputs` and `decode_steps` describe the steps by shape alone, for
    compiling them for a topology that is not present (`hat_jax.aot`, `tools/aot_compile.py`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import ml_collections

from hat_jax.data.iterators import Batch, CheckpointableIterator

Metrics = dict[str, jax.Array]


class Task(abc.ABC):
  """Base class for a trainable model family."""

  unit: str = "tokens"  # what throughput is counted in

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Any:
    """Fresh parameters (a pytree; may contain flax LogicallyPartitioned boxes)."""

  @abc.abstractmethod
  def loss(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
    """Scalar training loss and scalar metrics for one batch."""

  @abc.abstractmethod
  def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1) -> CheckpointableIterator:
    """Infinite, deterministic, checkpointable iterator over this process's slice of training batches."""

  @abc.abstractmethod
  def eval_batches(self) -> Iterable[Batch]:
    """A fixed finite sequence of validation batches."""

  def units_per_batch(self, batch: Batch) -> int:
    """Number of `unit`s (e.g. predicted bytes) in a batch, for throughput."""
    if "loss_mask" in batch:
      return int(batch["loss_mask"].sum())
    raise NotImplementedError(f"{type(self).__name__} must define units_per_batch (its batches have no loss_mask).")

  def throughput_counts(self, batch: Batch) -> dict[str, float]:
    """Per-batch counts the trainer reports per second (as `<name>_per_sec`); override to add more,
    e.g. {"bytes": ..., "words": ...} for HAT. Counted on this process's batch."""
    return {self.unit: self.units_per_batch(batch)}

  def generate(self, params: Any, rng: jax.Array) -> str:
    """Generate from trained params using `config.sample` (text, or images written to files); returns the
    text the CLI prints for `--mode=sample`. Drawing one token is `hat_jax.generate.sampling.sample`."""
    raise NotImplementedError(f"task {self.config.task!r} has no generation (Task.generate).")

  sum_metrics: tuple[str, ...] = ()

  def byte_log_probs(self, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """For scoring text (`hat_jax.score`): the natural-log probability the model gives each byte of a packed
    batch, from the same forward pass as `loss`. Returns (byte_lp [B, S] float32: log p(bytes[t] | what
    precedes it in its segment), 0 where bytes[t] is not predicted; word_end_lp [B, W] float32: log p(word j
    ends) for models that predict word ends explicitly, 0 elsewhere). Pure and jit-able."""
    del params, batch
    raise NotImplementedError(f"task {self.config.task!r} does not score bytes (Task.byte_log_probs); scoring "
                              "works for the byte-level LM tasks 'hat' and 'bytes'.")

  # -- ahead-of-time compilation (hat_jax.aot): shapes only, no data ---------------------------------

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every array of a training batch of `batch_size` rows, without reading data."""
    raise NotImplementedError(f"{type(self).__name__} does not describe its batches (Task.batch_spec), so it "
                              "cannot be compiled ahead of time.")

  def training_flops(self, batch: Batch | None = None, *, attention: str = "causal") -> dict[str, float] | None:
    """Analytic FLOPs of one training step on the GLOBAL `batch` (arrays or ShapeDtypeStructs; shapes
    only; None: the config's batch and row sizes), in the convention of `hat_jax.train.flops`:
    {"train": 3 x forward, "forward", "forward/<level>"}. None for a task without a formula (its logs
    then carry XLA's count only)."""
    del batch, attention
    return None

  def six_nd_flops(self, params: dict[str, int]) -> float | None:
    """Kaplan's C = 6 * sum over levels of (non-embedding params x positions that level processes in the
    whole run), for the scaling-law fits (`hat_jax.sweep`); None when the task does not define it."""
    del params
    return None

  def stub_frozen_inputs(self) -> None:
    """Replace what `loss` reads from files besides the batch (a frozen tokenizer's params) by zeros of the
    right shapes, so that the step compiles without those files. No-op for tasks that read none."""

  def decode_steps(self, batch_size: int) -> dict[str, tuple[Any, tuple]]:
    """The cached generation steps, for ahead-of-time compilation: name -> (fn(params, *args), abstract
    args), each one step of the sampler on `batch_size` rows with KV caches as large as a training row.
    Empty for tasks without cached generation."""
    del batch_size
    return {}

  def eval_iterator(self) -> Iterator[Batch]:
    return iter(self.eval_batches())
