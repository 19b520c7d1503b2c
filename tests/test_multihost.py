"""A real 2-process run on localhost: jax.distributed with CPU (gloo) collectives, 2 CPU devices per process.

Launch 1 trains for 2 of 4 steps through `trainer.train` (per-process grain data slices, a 4-device
global mesh spanning both processes) and checkpoints with orbax from both processes; launch 2 (two
fresh processes) restores step 2 and continues to step 4. Two tasks: the trainer tests' toy task
(45-70 s on 2 shared CPU cores) and the HAT `size=test,corpus=toy` config (115-190 s: four HAT compiles).
The processes join through the env path of `hat_jax.distributed.maybe_initialize`
(JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), exactly as `hat_jax.main` does.

This file is also the worker: `python tests/test_multihost.py <task> <workdir> <stop_at_step> <result.json>`.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES, LOCAL_DEVICES, TOTAL_STEPS = 2, 2, 4
TIMEOUT_S = 240  # per launch; a hung collective must fail the test, not the CI job


def _worker(task: str, workdir: str, stop_at_step: int, result_path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  # Before any backend work: 2 CPU devices per process; gloo is the CPU cross-process collective backend
  # (the default in jax 0.10, set explicitly so a changed default cannot turn this into a hang).
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from hat_jax import distributed  # pylint: disable=g-import-not-at-top
  assert distributed.maybe_initialize(), "the JAX_* env vars should have triggered jax.distributed"
  assert jax.process_count() == NUM_PROCESSES and jax.device_count() == NUM_PROCESSES * LOCAL_DEVICES

  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top
  if task == "hat":
    from configs import hat as hat_config  # pylint: disable=g-import-not-at-top
    config = hat_config.get_config("size=test,corpus=toy")
  else:
    sys.path.insert(0, os.path.join(_ROOT, "tests", "train"))
    import toy_task  # pylint: disable=g-import-not-at-top
    config = toy_task.toy_config()
  config.train.steps, config.train.log_every = TOTAL_STEPS, 1
  config.train.checkpoint_every, config.train.eval_every = 2, 100  # eval only at the final step
  result = trainer.train(config, workdir, stop_at_step=stop_at_step)
  with open(result_path, "w", encoding="utf-8") as f:
    json.dump({"process": jax.process_index(), **result}, f)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(task: str, workdir: str, stop_at_step: int, tmp_path) -> list[dict]:
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the suite's 8-device flag
  # Launch 2 compiles the same programs as launch 1: a shared persistent cache skips that work.
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jit_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
             PYTHONPATH=_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  procs, outputs = [], []
  for i in range(NUM_PROCESSES):
    out = tmp_path / f"result_{stop_at_step}_{i}.json"
    outputs.append(out)
    procs.append(subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), task, workdir, str(stop_at_step), str(out)],
        env={**env, "JAX_PROCESS_ID": str(i)}, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  logs, start = [], time.perf_counter()
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:  # on a timeout, do not leave a process waiting on its peer
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-4000:]}"
  print(f"launch to step {stop_at_step}: {time.perf_counter() - start:.1f} s")
  return [json.loads(out.read_text()) for out in outputs]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("task", ["toy", "hat"])
def test_two_process_train_save_restore(task, tmp_path):
  workdir = str(tmp_path / "run")
  first = _launch(task, workdir, 2, tmp_path)
  assert [r["step"] for r in first] == [2.0, 2.0]
  assert first[0]["train/loss"] == first[1]["train/loss"]  # one global loss, seen by both processes

  second = _launch(task, workdir, TOTAL_STEPS, tmp_path)
  assert [r["step"] for r in second] == [float(TOTAL_STEPS)] * 2
  assert second[0]["train/loss"] == second[1]["train/loss"]
  assert second[0]["eval/loss"] == second[1]["eval/loss"]

  # Both launches wrote one checkpoint per save (orbax across processes) ...
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [2, 4]
  data_states = sorted(f for f in os.listdir(os.path.join(ckpt, "2", "data")) if f.endswith(".json"))
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]  # per-process data slices
  # ... and launch 2 continued from step 2 instead of restarting: process 0 logged steps 1..4 once each.
  from hat_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  steps = [r["step"] for r in metrics_lib.read_jsonl(workdir, "train")]
  assert steps == [1, 2, 3, 4]


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
