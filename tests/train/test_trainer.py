"""Trainer behaviour on the toy task: learning, exact resume, SIGTERM, NaN stop, metrics files."""

import os
import shutil

import jax
import numpy as np
import pytest
from etils import epath

import toy_task
from hat_jax.train import checkpoint as ckpt_lib
from hat_jax.train import metrics as metrics_lib
from hat_jax.train import trainer


def load_checkpoint(config, workdir, step=None):
  """(step, state as numpy, data state) of a checkpoint, restored onto one device."""
  run = trainer.build(config, toy_task.one_device())
  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None) as ckpt:
    step, state, data = ckpt.restore(run.abstract_target(), step)
  return step, jax.device_get(state), data


def assert_trees_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes(), "arrays differ bitwise"


def test_loss_decreases_and_metrics_are_written(reference_run):
  workdir, _, result = reference_run
  train = metrics_lib.read_jsonl(workdir, "train")
  evals = metrics_lib.read_jsonl(workdir, "eval")
  assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
  assert [r["step"] for r in evals] == [6, 12]
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert evals[-1]["loss"] < evals[0]["loss"]
  for key in ("bits_per_token", "grad_norm", "learning_rate", "tokens_per_sec", "steps_per_sec",
              "tflops_per_sec_per_device"):
    assert key in train[-1], key
  # sum_metrics are summed over the two eval batches of 4 x 16 tokens, other metrics averaged.
  assert evals[-1]["num_tokens"] == 2 * 4 * 16
  assert result["step"] == 12 and result["eval/loss"] == evals[-1]["loss"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None)
  assert ckpt.all_steps() == [4, 8, 12]
  assert ckpt.restore_config()["task"] == "toy_task:ToyTask"
  ckpt.close()


def test_finished_run_does_not_train_again(reference_run):
  workdir, config, _ = reference_run
  before = len(metrics_lib.read_jsonl(workdir, "train"))
  result = trainer.train(config, workdir, devices=toy_task.one_device())
  assert result["step"] == 12
  assert len(metrics_lib.read_jsonl(workdir, "train")) == before


def test_resume_after_kill_is_bit_identical(reference_run, tmp_path):
  ref_dir, config, _ = reference_run
  workdir = str(tmp_path)
  # Train to 6 (checkpoints 4 and 6), then "kill": lose everything after the periodic checkpoint 4,
  # so the resumed run replays steps 4..6 from the restored data-iterator position.
  trainer.train(config, workdir, stop_at_step=6, devices=toy_task.one_device())
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  trainer.train(config, workdir, devices=toy_task.one_device())
  step, state, data = load_checkpoint(config, workdir)
  ref_step, ref_state, ref_data = load_checkpoint(config, ref_dir)
  assert step == ref_step == 12
  assert_trees_bitwise_equal(state, ref_state)
  assert data == ref_data and data["next_index"] == 12


def test_sigterm_saves_checkpoint_then_resume_matches(reference_run, tmp_path):
  ref_dir, _, _ = reference_run
  workdir = str(tmp_path)
  config = toy_task.single_device_config()
  config.data.sigterm_at_batch = 6  # the signal arrives while fetching the batch for step 6
  with pytest.raises(trainer.Preempted, match="checkpoint saved at step 7"):
    trainer.train(config, workdir, devices=toy_task.one_device())
  step, state, _ = load_checkpoint(config, workdir)
  assert step == 7 and int(state["step"]) == 7
  config.data.sigterm_at_batch = -1
  trainer.train(config, workdir, devices=toy_task.one_device())
  _, state, _ = load_checkpoint(config, workdir)
  _, ref_state, _ = load_checkpoint(config, ref_dir)
  assert_trees_bitwise_equal(state, ref_state)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(reference_run, tmp_path):
  ref_dir, _, _ = reference_run
  workdir = str(tmp_path)
  config = toy_task.single_device_config()
  config.data.nan_at_step = 5
  with pytest.raises(FloatingPointError, match=r"at step 5 .*newest checkpoint is step 4 .*written after a finite step"):
    trainer.train(config, workdir, devices=toy_task.one_device())
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None)
  assert ckpt.all_steps() == [4]
  ckpt.close()
  _, state, _ = load_checkpoint(config, workdir)
  _, ref_state, _ = load_checkpoint(config, ref_dir, step=4)
  assert_trees_bitwise_equal(state, ref_state)


def test_eval_and_sample_from_checkpoint(reference_run):
  workdir, config, result = reference_run
  evaluated = trainer.evaluate(config, workdir, toy_task.one_device())
  assert evaluated["step"] == 12
  np.testing.assert_allclose(evaluated["eval/loss"], result["eval/loss"], rtol=1e-6)
  assert trainer.generate(config, workdir, toy_task.one_device()).startswith("toy sample:")


def test_sample_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint found .* Train first"):
    trainer.generate(toy_task.single_device_config(), str(tmp_path))


def test_bfloat16_params(tmp_path):
  config = toy_task.single_device_config(param_dtype="bfloat16")
  run = trainer.build(config, toy_task.one_device())
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(run.abstract_state["params"])}
  assert dtypes == {np.dtype(jax.numpy.bfloat16)}


def test_data_state_from_a_different_process_count_is_a_clear_error(tmp_path):
  (tmp_path / "process_0-of-2.json").write_text("{}")  # written by a 2-process run; this is 1 process
  with pytest.raises(ValueError, match="different process count"):
    ckpt_lib._DataStateHandler().restore(epath.Path(tmp_path))
