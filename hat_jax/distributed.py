"""Multi-process (multi-host) setup: `jax.distributed.initialize()` only when a cluster is configured.

Single-process runs (a laptop, one GPU box, CI) must not call it: it would wait for a coordinator.
A multi-process environment is recognised from explicit flags/env (`--coordinator_address` or
`JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`) or from a launcher jax auto-detects: Cloud TPU pod
slices (`TPU_WORKER_HOSTNAMES` with more than one host / `MEGASCALE_*`), SLURM with more than one
task, Open MPI (`OMPI_COMM_WORLD_SIZE` > 1).
"""

from __future__ import annotations

import os

import jax
from absl import logging


def _int_env(name: str, default: int = 1) -> int:
  try:
    return int(os.environ.get(name, default))
  except ValueError:
    return default


def multi_process_env() -> bool:
  """True when the environment describes more than one process."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return True
  if _int_env("MEGASCALE_NUM_SLICES") > 1:
    return True
  if _int_env("SLURM_NTASKS") > 1 and "SLURM_JOB_ID" in env:
    return True
  return _int_env("OMPI_COMM_WORLD_SIZE") > 1


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Initialise jax.distributed if asked (arguments) or if the environment is multi-process.

  Returns True when it initialised. Must run before any other jax call that touches devices.
  """
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = _int_env("JAX_NUM_PROCESSES")
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = _int_env("JAX_PROCESS_ID", 0)
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not multi_process_env():
    return False
  kwargs = {}
  if coordinator_address is not None:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes is not None:
    kwargs["num_processes"] = num_processes
  if process_id is not None:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count())
  return True


def all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process: one process's failure (a damaged file only it reads, a lock
  only it takes) must stop them all together rather than leave the others waiting in a collective."""
  if jax.process_count() == 1:
    return bool(ok)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(ok)))))


def sync_processes(name: str) -> None:
  """A barrier across processes (no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
