"""Fault injection on the trainer's checkpoints: damaged files, failed saves, a second writer.

Each test damages a copy of the reference run (toy task, 12 steps, checkpoints 4 / 8 / 12) the way
storage fails in practice and checks that the run never continues from what it cannot verify, that the
message names the checkpoint and the way out, and that the way out reaches the uninterrupted run's
parameters bit for bit. README "Failure handling" lists these tests.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

import toy_task
from hat_jax.train import checkpoint as ckpt_lib
from hat_jax.train import trainer
from test_trainer import assert_trees_bitwise_equal, load_checkpoint


@pytest.fixture
def copied_run(reference_run, tmp_path):
  """A finished copy of the reference run: (workdir, config, reference workdir)."""
  ref_dir, config, _ = reference_run
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  return workdir, toy_task.single_device_config(), ref_dir


def _data_files(step_dir: str) -> list[str]:
  """The array data of process 0's shard (`state/ocdbt.process_0/d/*`): chunk values, and B-tree nodes
  that the merged root index may no longer use (damage there changes nothing that is read)."""
  d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return [os.path.join(d, f) for f in sorted(os.listdir(d))]


def _overwrite(path: str, offset_fraction: float, data: bytes) -> None:
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(int(size * offset_fraction))
    f.write(data[:max(1, size - int(size * offset_fraction))])


def _flip_bit(path: str) -> None:
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


def _each(fn):
  return lambda step_dir: [fn(path) for path in _data_files(step_dir)]


_DAMAGE = {
    # what happened to checkpoints/12 -> how
    "overwritten bytes in the data files": _each(lambda p: _overwrite(p, 0.5, np.random.default_rng(0).bytes(300))),
    "one flipped bit in each data file": _each(_flip_bit),
    "truncated data files": _each(lambda p: os.truncate(p, os.path.getsize(p) // 2)),
    "missing shard": lambda d: shutil.rmtree(os.path.join(d, "state", "ocdbt.process_0")),
    "damaged array metadata": lambda d: _overwrite(os.path.join(d, "state", "_METADATA"), 0.3, b"#" * 40),
    "damaged ocdbt manifest": lambda d: _overwrite(os.path.join(d, "state", "manifest.ocdbt"), 0.5, b"\0" * 16),
    "changed data-iterator state": lambda d: _edit_json(
        os.path.join(d, "data", "process_0-of-1.json"), lambda s: s.replace('"next_index": 12', '"next_index": 13')),
    "damaged data-iterator file": lambda d: _overwrite(os.path.join(d, "data", "process_0-of-1.json"), 0.5, b"\xff"),
    "damaged fingerprints": lambda d: _overwrite(os.path.join(d, "integrity", "metadata"), 0.5, b"~~~~"),
}


def _edit_json(path, edit):
  text = open(path).read()
  edited = edit(text)
  assert edited != text, "the damage did not apply"
  open(path, "w").write(edited)


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_damaged_newest_checkpoint_is_refused_naming_the_newest_verified(copied_run, damage):
  workdir, config, _ = copied_run
  step_dir = os.path.join(workdir, "checkpoints", "12")
  _DAMAGE[damage](step_dir)
  before = sorted(os.listdir(step_dir))
  with pytest.raises(ckpt_lib.CheckpointCorruptError) as caught:
    trainer.train(config, workdir, devices=toy_task.one_device())
  message = str(caught.value)
  assert message.startswith(f"Checkpoint step 12 in {workdir}/checkpoints ")
  assert "newest checkpoint that verifies is step 8" in message
  assert "--config.train.on_bad_checkpoint=fallback" in message
  assert "good" not in message
  assert sorted(os.listdir(step_dir)) == before and not os.path.exists(
      os.path.join(workdir, "checkpoints_quarantine"))  # refusing touches nothing
  if "data-iterator" not in damage:  # readers (eval, sample) verify the params they read
    with pytest.raises(ckpt_lib.CheckpointCorruptError, match="step 12"):
      trainer.evaluate(config, workdir, toy_task.one_device())


def test_damage_in_any_one_file_is_caught_or_harmless(reference_run, tmp_path):
  """Each file of the state item damaged alone: the restore either refuses, or returns exactly the saved
  values (the file held nothing it reads, e.g. a B-tree node superseded by the merged index)."""
  ref_dir, config, _ = reference_run
  run = trainer.build(config, toy_task.one_device())
  _, saved, _ = load_checkpoint(config, ref_dir, step=12)
  state_dir = os.path.join(ref_dir, "checkpoints", "12", "state")
  files = sorted(os.path.relpath(os.path.join(root, f), state_dir) for root, _, names in os.walk(state_dir)
                 for f in names)
  outcomes = {}
  for name in files:
    workdir = str(tmp_path / name.replace(os.sep, "_"))
    shutil.copytree(ref_dir, workdir)
    _overwrite(os.path.join(workdir, "checkpoints", "12", "state", name), 0.5, np.random.default_rng(1).bytes(300))
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None) as ckpt:
      try:
        _, state, _ = ckpt.restore(run.abstract_target(), 12)
      except ckpt_lib.CheckpointCorruptError:
        outcomes[name] = "refused"
        continue
    assert_trees_bitwise_equal(state, saved)
    outcomes[name] = "unused"
  assert "refused" in outcomes.values(), outcomes
  assert outcomes["_METADATA"] == outcomes["manifest.ocdbt"] == "refused"


def test_mismatch_names_the_array(copied_run):
  workdir, config, _ = copied_run
  # Damage that decodes: rewrite the fingerprint of one array, as if its data had changed.
  path = os.path.join(workdir, "checkpoints", "12", "integrity", "metadata")
  stored = json.loads(open(path).read())
  key = "['params']['head']['kernel']"
  stored["state"][key][0] ^= 1
  open(path, "w").write(json.dumps(stored))
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r"1 of \d+ arrays differ from their fingerprints "
                     r"\(\['params'\]\['head'\]\['kernel'\]: stored fingerprint"):
    trainer.train(config, workdir, devices=toy_task.one_device())


def test_fallback_resumes_from_the_newest_verified_and_keeps_the_bad_one(copied_run):
  workdir, config, ref_dir = copied_run
  _DAMAGE["overwritten bytes in the data files"](os.path.join(workdir, "checkpoints", "12"))
  config.train.on_bad_checkpoint = "fallback"
  result = trainer.train(config, workdir, devices=toy_task.one_device())
  assert result["step"] == 12
  quarantined = os.listdir(os.path.join(workdir, "checkpoints_quarantine"))
  assert len(quarantined) == 1 and quarantined[0].startswith("12-")
  assert os.path.exists(os.path.join(workdir, "checkpoints_quarantine", quarantined[0], "state"))
  _, state, data = load_checkpoint(config, workdir)  # the new step 12, trained again from 8
  _, ref_state, ref_data = load_checkpoint(config, ref_dir)
  assert_trees_bitwise_equal(state, ref_state)
  assert data == ref_data


def test_no_verified_checkpoint_at_all(copied_run):
  workdir, config, _ = copied_run
  for step in (4, 8, 12):
    _DAMAGE["missing shard"](os.path.join(workdir, "checkpoints", str(step)))
  config.train.on_bad_checkpoint = "fallback"
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r"No earlier checkpoint verifies either \(steps "
                     r"\[12, 8, 4\]\): restore the checkpoints from a copy, or start a fresh --workdir"):
    trainer.train(config, workdir, devices=toy_task.one_device())
  assert not os.path.exists(os.path.join(workdir, "checkpoints_quarantine"))


def test_bad_on_bad_checkpoint_value(copied_run):
  workdir, config, _ = copied_run
  config.train.on_bad_checkpoint = "ignore"
  with pytest.raises(ValueError, match="on_bad_checkpoint='ignore': expected 'refuse' or 'fallback'"):
    trainer.train(config, workdir, devices=toy_task.one_device())


def test_checkpoint_of_another_config_names_the_fields(copied_run, tmp_path):
  workdir, _, _ = copied_run
  config = toy_task.single_device_config()
  config.model.d_model, config.model.mlp_dim = 24, 48
  with pytest.raises(ValueError, match=r"other shapes .* It was written with a different config: "
                     r"model\.d_model: 16 -> 24; model\.mlp_dim: 32 -> 48\."):
    trainer.train(config, workdir, devices=toy_task.one_device())


def test_resuming_with_changed_fields_logs_them(copied_run, caplog):
  workdir, config, _ = copied_run
  config.train.steps, config.train.log_every = 13, 1
  import logging  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING):
    trainer.train(config, workdir, devices=toy_task.one_device())
  assert "train.log_every: 2 -> 1; train.steps: 12 -> 13" in caplog.text


# --- failed saves ------------------------------------------------------------------------------------


def _fail_writes(monkeypatch, name: str, code: int, at_step: str):
  """OSError(code) from every epath write of a file `name` inside checkpoints/<at_step>."""
  original = epath.abstract_path.Path.write_text

  def write_text(self, *args, **kwargs):
    if self.name == name and f"{os.sep}{at_step}." in str(self):  # inside "<step>.orbax-checkpoint-tmp"
      raise OSError(code, os.strerror(code), str(self))
    return original(self, *args, **kwargs)
  monkeypatch.setattr(epath.abstract_path.Path, "write_text", write_text)


@pytest.mark.parametrize("name,code", [("process_0-of-1.json", errno.ENOSPC), ("metadata", errno.EIO),
                                       ("_CHECKPOINT_METADATA", errno.ENOSPC)])
def test_failed_save_stops_the_run_and_is_never_resumed(reference_run, tmp_path, monkeypatch, name, code):
  ref_dir, _, _ = reference_run
  workdir = str(tmp_path)
  config = toy_task.single_device_config()
  _fail_writes(monkeypatch, name, code, at_step="8")
  with pytest.raises(ckpt_lib.CheckpointSaveError) as caught:
    trainer.train(config, workdir, devices=toy_task.one_device())
  message = str(caught.value)
  assert f"Saving checkpoint step 8 in {workdir}/checkpoints failed" in message
  assert f"[{errno.errorcode[code]}: {os.strerror(code)}]" in message
  assert "the newest complete checkpoint is step 4" in message
  monkeypatch.undo()
  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None) as ckpt:
    assert ckpt.all_steps() == [4]
  trainer.train(config, workdir, devices=toy_task.one_device())  # resumes from 4
  _, state, _ = load_checkpoint(config, workdir)
  _, ref_state, _ = load_checkpoint(config, ref_dir)
  assert_trees_bitwise_equal(state, ref_state)


def test_write_error_inside_tensorstore_is_a_save_error(tmp_path):
  """A real failed write() in tensorstore's C++ writer: RLIMIT_FSIZE makes the kernel refuse a large
  data file (EFBIG), after a first small checkpoint was written."""
  script = textwrap.dedent(f"""
      import resource, signal
      import jax.numpy as jnp, numpy as np
      from hat_jax.train import checkpoint as ckpt_lib
      ckpt = ckpt_lib.Checkpointer({str(tmp_path)!r}, keep=None)
      ckpt.save(1, {{"w": jnp.ones(16)}}, {{"i": 1}})
      ckpt.wait()
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
      try:
        ckpt.save(2, {{"w": jnp.asarray(np.random.default_rng(0).normal(size=1 << 18), jnp.float32)}}, {{"i": 2}})
        ckpt.wait()
      except ckpt_lib.CheckpointSaveError as e:
        print("SAVE ERROR:", e)
      ckpt.close()
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert "SAVE ERROR: Saving checkpoint step 2" in out.stdout, out.stdout + out.stderr[-3000:]
  assert "[EFBIG: File too large]" in out.stdout and "the newest complete checkpoint is step 1" in out.stdout
  with ckpt_lib.Checkpointer(str(tmp_path), keep=None) as ckpt:
    assert ckpt.all_steps() == [1]
    step, state, data = ckpt.restore({"w": jnp.zeros(16)})
  assert step == 1 and data == {"i": 1}
  np.testing.assert_array_equal(state["w"], np.ones(16))


# --- a frozen model's params (the image tasks' tokenizer) ---------------------------------------------


def test_restore_params_verifies_a_tokenizer_checkpoint(tmp_path):
  params = {"enc": {"w": jnp.arange(6.0).reshape(2, 3)}, "codebook": jnp.ones((4, 2))}
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, {"step": jnp.int32(5), "params": params, "opt_state": ()}, None)
  path = tmp_path / "5" / "integrity" / "metadata"
  stored = json.loads(path.read_text())
  stored["state"]["['params']['codebook']"][1] += 1
  path.write_text(json.dumps(stored))
  abstract = {"enc": {"w": jnp.zeros((2, 3))}, "codebook": jnp.zeros((4, 2))}
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt, pytest.raises(
      ckpt_lib.CheckpointCorruptError, match=r"Checkpoint step 5 .*\['params'\]\['codebook'\]: stored fingerprint"):
    ckpt.restore_params(abstract)
