"""`python -m hat_jax.main` end to end in a subprocess: overrides, train_and_sample, clear errors."""

import json
import os
import subprocess
import sys

import pytest

from hat_jax.train import run_lock

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
  with run_lock.RunLock(str(tmp_path)):  # this test's process holds the workdir
    proc = run_cli(f"--workdir={tmp_path}")
  assert proc.returncode == 1
  assert f"ERROR: Another run is using {tmp_path}: host" in proc.stderr and f"pid {os.getpid()}," in proc.stderr


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_like_one(reference_run, tmp_path):
  """2 processes x 4 CPU devices (jax.distributed over localhost): per-process data slices assemble
  into the same global batches, only process 0 logs, each process checkpoints its data state."""
  ref_dir, _, _ = reference_run
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, _HERE]), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "hat_jax.main", f"--config={_CONFIG}", f"--workdir={workdir}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
       "--config.train.steps=4", "--config.train.checkpoint_every=2"],
      cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4]  # written once: only process 0 logs
  # Steps 0-1 do not depend on the schedule's length (lr(0) = 0 in warmup), so they match the
  # single-process reference; the global batch holds the same examples in another order.
  with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
    ref = [json.loads(line) for line in f if '"train"' in line]
  assert abs(train[0]["loss"] - ref[0]["loss"]) <= 1e-5 * abs(ref[0]["loss"])
  data_dir = os.path.join(workdir, "checkpoints", "4", "data")
  assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
