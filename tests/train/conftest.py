"""Trainer-test setup: repo root and this directory importable (configs.common, toy_task), and one
reference 12-step training run that several tests compare against. (The persistent compilation cache
is session-wide, in tests/conftest.py.)"""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for path in (_ROOT, _HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

import toy_task  # noqa: E402
from hat_jax.train import trainer  # noqa: E402

@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """Uninterrupted run: 12 steps on one device, checkpoints every 4 (kept: 4, 8, 12)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = toy_task.single_device_config()
  result = trainer.train(config, workdir, devices=toy_task.one_device())
  return workdir, config, result
