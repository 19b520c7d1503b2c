"""`python -m hat_jax.main` end to end in a subprocess: overrides, train_and_sample, clear errors."""

import json
import os
import subprocess
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_CONFIG = os.path.join("tests", "train", "toy_task.py")


def run_cli(*args, timeout=300):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, _HERE, os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "hat_jax.main", f"--config={_CONFIG}", *args], cwd=_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_train_and_sample_with_overrides(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_cli(f"--workdir={workdir}", "--mode=train_and_sample", "--config.train.steps=3",
                 "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.mesh.data=-1",
                 "--config.model.mlp_dim=24")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "toy sample:" in proc.stdout and "final:" in proc.stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  with open(os.path.join(workdir, "checkpoints", "3", "config", "metadata")) as f:
    saved = json.load(f)
  assert saved["train"]["steps"] == 3 and saved["model"]["mlp_dim"] == 24


@pytest.mark.integration
def test_cli_errors_are_clear(tmp_path):
  proc = run_cli(f"--workdir={tmp_path}", "--mode=sample")
  assert proc.returncode == 1
  assert "ERROR: No checkpoint found" in proc.stderr and "Train first" in proc.stderr
  proc = run_cli(f"--workdir={tmp_path}", "--config.train.no_such_field=1")
  assert proc.returncode != 0 and "no_such_field" in proc.stderr
