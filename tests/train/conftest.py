"""Trainer-test setup: repo root and this directory importable (configs.common, toy_task), a
session-wide persistent compilation cache (the same toy programs compile once, not once per run),
and one reference 12-step training run that several tests compare against."""

import atexit
import os
import shutil
import sys
import tempfile

import jax
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for path in (_ROOT, _HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

# Must be set before the first compile of the session (conftests load before any test runs).
_CACHE = tempfile.mkdtemp(prefix="hat_jax_test_jit_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import toy_task  # noqa: E402
from hat_jax.train import trainer  # noqa: E402

@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """Uninterrupted run: 12 steps on one device, checkpoints every 4 (kept: 4, 8, 12)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = toy_task.single_device_config()
  result = trainer.train(config, workdir, devices=toy_task.one_device())
  return workdir, config, result
