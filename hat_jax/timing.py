"""Wall-clock timing of jitted calls for the benchmark scripts (tools/, experiments/)."""

from __future__ import annotations

import time

import jax


def wall_times(fn, *args, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls fn(*args), each waited for with block_until_ready, after
  one untimed call that pays for compilation and warm-up. Callers pick min, median or mean."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times
