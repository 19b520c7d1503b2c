"""SIGKILL at random moments, rerunning the same command each time, until the run finishes: the final
parameters are bit-identical to an uninterrupted run's. Each kill leaves what a real crash leaves (a
half-written `<step>.orbax-checkpoint-tmp`, the dead run's `run.lock`), and each rerun must resume from
the newest complete checkpoint, verify it, and take the dead run's lock over."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import toy_task
from hat_jax.train import checkpoint as ckpt_lib
from test_trainer import assert_trees_bitwise_equal, load_checkpoint

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_STEPS, _KILLS = 60, 5


def _config():
  config = toy_task.single_device_config(steps=_STEPS, checkpoint_every=4, log_every=4, eval_every=_STEPS,
                                         keep_checkpoints=3)
  config.data.batch_delay_s = 0.1  # ~6 s of training: kills land before, during and between saves
  return config


_WORKER = f"""
import sys
sys.path[:0] = [{_HERE!r}, {_ROOT!r}]
import test_kill_loop, toy_task
from hat_jax.train import trainer
trainer.train(test_kill_loop._config(), sys.argv[1], devices=toy_task.one_device())
"""


def _launch(workdir):
  return subprocess.Popen([sys.executable, "-c", _WORKER, workdir], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_random_sigkills_then_rerun_give_the_uninterrupted_params(tmp_path):
  reference = str(tmp_path / "reference")
  done = _launch(reference)
  assert done.wait(timeout=300) == 0, done.stderr.read()[-3000:]

  workdir = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  resumed_from = []
  for _ in range(_KILLS):
    run = _launch(workdir)
    time.sleep(float(rng.uniform(4.0, 10.0)))
    run.send_signal(signal.SIGKILL)
    run.wait()
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None) as ckpt:
      resumed_from.append(ckpt.latest_step())
  final = _launch(workdir)
  assert final.wait(timeout=300) == 0, final.stderr.read()[-3000:]
  print("latest checkpoint after each kill:", resumed_from)
  assert any(s is not None and s < _STEPS for s in resumed_from), f"no kill landed mid-run: {resumed_from}"

  config = _config()
  step, state, data = load_checkpoint(config, workdir)
  ref_step, ref_state, ref_data = load_checkpoint(config, reference)
  assert step == ref_step == _STEPS
  assert_trees_bitwise_equal(state, ref_state)
  assert data == ref_data
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # the final run released the lock it took over
