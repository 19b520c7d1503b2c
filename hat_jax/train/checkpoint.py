"""Checkpoints: the ONLY module that imports orbax (a later move to orbax v1 stays local).

A checkpoint at step s holds three items (orbax v0 `CheckpointManager`, always with `args=`):
  * `state`: {"step", "params", "opt_state"} ({"step", "params"} when converted from another format), saved
    with PyTreeSave and restored with
    PyTreeRestore onto an abstract target whose leaves carry the *current* mesh's shardings, so a
    run may resume on a different mesh or device count.
  * `data`: the training iterator's `get_state()` dict, one JSON file per process
    (`process_<i>-of-<n>.json`) because each process reads its own data slice.
  * `config`: the run's config as JSON (for humans and tools; resume uses the live config, and a
    checkpoint whose params do not fit it is an error naming the config fields that differ).
  * `integrity`: a fingerprint of every array of `state` (`integrity.py`), computed on device before the
    save and checked after every restore, so data that changed on disk never loads silently. The data
    state carries a sha256 of its JSON.

A restore that cannot read a checkpoint, or reads other numbers than were saved, raises
`CheckpointCorruptError`; `restore_newest_verified` turns that into the trainer's refuse / fall-back
policy. A save that fails (disk full, I/O error) raises `CheckpointSaveError`: orbax only renames a
step's `<step>.orbax-checkpoint-tmp` folder into place after every write succeeded, so a failed save is
never resumed from.

Every process must call `save`/`restore` (orbax coordinates them); only the primary writes shared files.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from hat_jax import distributed
from hat_jax.train import integrity


class CheckpointCorruptError(RuntimeError):
  """A checkpoint could not be read, or read back other values than were saved."""

  def __init__(self, step: int, directory: str, problem: str):
    self.step, self.directory, self.problem = step, directory, problem
    super().__init__(f"Checkpoint step {step} in {directory} {problem}")


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed; it was not committed."""


class _DataStateHandler(ocp.CheckpointHandler):
  """Per-process JSON of a checkpointable iterator's state dict (grain's handler, minus its type checks:
  any `get_state() -> dict` iterator works)."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    self._file(directory).write_text(json.dumps(
        {"iterator_state": args.state, "sha256": integrity.json_checksum(args.state)}))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> dict:
    path = self._file(directory)
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
      raise ValueError(
          f"No data-iterator state for process {jax.process_index()} of {jax.process_count()} in {directory} "
          f"(found {found}). The checkpoint was written with a different process count; resume with the "
          f"same number of processes, or start a fresh --workdir.")
    try:
      stored = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{path.name} is not valid JSON ({e})") from e
    if not (isinstance(stored, dict) and set(stored) == {"iterator_state", "sha256"}):
      logging.warning("The data-iterator state in %s has no checksum (written before checksums); unverified.",
                      directory)
      return stored
    if integrity.json_checksum(stored["iterator_state"]) != stored["sha256"]:
      raise ValueError(f"the data-iterator state {path.name} does not match its sha256")
    return stored["iterator_state"]

  def metadata(self, directory: epath.Path) -> None:
    return None


@ocp.args.register_with_handler(_DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict


@ocp.args.register_with_handler(_DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


@dataclasses.dataclass(frozen=True)
class LazyArray:
  """A host array that `Checkpointer.save` writes without the tree ever holding it: `load()` makes it when
  its turn comes, and it is dropped once written, so a converted checkpoint (hat_jax.convert) is written
  one array at a time. Restores as an ordinary array. Needs precomputed fingerprints (`save(fingerprints=)`)."""

  shape: tuple[int, ...]
  dtype: Any
  load: Any  # () -> np.ndarray of `shape` and `dtype`

  @property
  def size(self) -> int:
    import math  # pylint: disable=g-import-not-at-top
    return math.prod(self.shape)

  @property
  def ndim(self) -> int:
    return len(self.shape)


class _LazyArrayHandler(ocp.type_handlers.NumpyHandler):
  """Writes `LazyArray`s one after another (each loaded, written, dropped); stored as numpy arrays."""

  def __init__(self):
    try:
      super().__init__(deepcopy_host_arrays=False)  # no copy of the array load() has just made
    except TypeError:  # older orbax (e.g. the GPU image's) has no such option and never copies
      super().__init__()

  async def _background_serialize(self, values, infos, args=None):
    for value, info, arg in zip(values, infos, args):
      array = value.load()
      if tuple(array.shape) != tuple(value.shape) or array.dtype != value.dtype:
        raise ValueError(f"LazyArray {info.name}: load() gave {array.shape} {array.dtype}, declared "
                         f"{value.shape} {value.dtype}.")
      await super()._background_serialize([array], [info], [arg])
      del array


# Replicated arrays are written cooperatively by their replicas ("replica-parallel"), which slices
# each array per device with a compiled op per shape and device. Worth it for big arrays, pure
# overhead (seconds of compiles on the first save) for small ones: only split slices above this size.
_MIN_REPLICA_SLICE_BYTES = 4 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  import numpy as np  # pylint: disable=g-import-not-at-top
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()), (LazyArray, _LazyArrayHandler()),
      (jax.Array, th.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (what StandardRestore needs to reshard)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for train state + data state + config.

  The trainer decides *when* to save (every `checkpoint_every` steps, at the end, on SIGTERM), so
  the manager saves whenever asked; `keep` is how many recent checkpoints survive.
  """

  def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True):
    self.directory = resolve_directory(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep and keep > 0 else None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = _state_handler()
    handlers.add("state", ocp.args.PyTreeSave, state_handler)
    handlers.add("state", ocp.args.PyTreeRestore, state_handler)
    handlers.add("data", DataStateSave, _DataStateHandler())
    handlers.add("data", DataStateRestore, _DataStateHandler())
    for name in ("config", "integrity"):
      handlers.add(name, ocp.args.JsonSave, ocp.handlers.JsonCheckpointHandler())
      handlers.add(name, ocp.args.JsonRestore, ocp.handlers.JsonCheckpointHandler())
    self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handlers)
    self._saving: int | None = None  # the step of the asynchronous save in flight
    self._failed = False

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None, config: Any = None,
           fingerprints: dict[str, list[int]] | None = None) -> bool:
    """Save (asynchronously when enabled); arrays are copied off-device before this returns, so the
    caller may donate `state` to the next step right away. The fingerprints are computed first, on the
    arrays' devices. An error of an earlier asynchronous save surfaces here or in `wait`, as
    CheckpointSaveError."""
    items = {"state": ocp.args.PyTreeSave(state),
             "integrity": ocp.args.JsonSave({"algorithm": integrity.ALGORITHM,
                                              "state": fingerprints or integrity.fingerprint_tree(state)})}
    if data_state is not None:
      items["data"] = DataStateSave(data_state)
    if config is not None:
      items["config"] = ocp.args.JsonSave(_config_to_json(config))
    self.wait()
    self._saving = step
    return self._raise_save_errors(lambda: self._manager.save(step, args=ocp.args.Composite(**items), force=True))

  def _raise_save_errors(self, fn):
    """Run a manager call that may surface a save's failure; raise it as CheckpointSaveError naming the
    step that failed (`self._saving`, the save in flight) and the newest complete checkpoint."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except  # orbax re-raises its writer threads' errors
      step, self._saving, self._failed = self._saving, None, True
      self._manager.reload()
      complete = self._manager.latest_step()
      newest = (f"the newest complete checkpoint is step {complete}" if complete is not None
                else "there is no complete checkpoint")
      raise CheckpointSaveError(
          f"Saving checkpoint step {step} in {self.directory} failed: {_describe_error(e)}. Nothing of it "
          f"was committed (a leftover {step}.orbax-checkpoint-tmp folder is ignored); {newest}. Fix the "
          f"storage (free space, check the disk or bucket), then rerun the same command to resume from "
          f"the newest complete checkpoint.") from e

  def restore(self, abstract_state: Any, step: int | None = None, *, with_data: bool = True,
              config: Any = None) -> tuple[int, Any, dict | None]:
    """Restore `state` onto `abstract_state` (ShapeDtypeStructs with shardings) and the data state,
    and verify both against their fingerprints. `config`, when given, names the differing fields if
    the checkpoint's params do not fit.

    Returns (step, state, data_state or None). Raises CheckpointCorruptError when the checkpoint
    cannot be read or reads back other values than were saved.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    stored_tree = self._stored_state_tree(step)
    self._check_params_match(step, abstract_state, stored_tree, config)
    if (isinstance(abstract_state, dict) and "opt_state" in abstract_state and isinstance(stored_tree, dict)
        and "params" in stored_tree and "opt_state" not in stored_tree):
      # A converted checkpoint (hat_jax.convert) holds step and params only: the caller starts a fresh
      # optimizer state (the returned state has no "opt_state").
      abstract_state = {k: v for k, v in abstract_state.items() if k != "opt_state"}
    items = {"state": ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
    stored = set(self._item_names(step))
    if with_data and "data" in stored:
      items["data"] = DataStateRestore()
    restored = self._read(step, items)
    self._verify(step, restored, {"state": restored["state"]})
    return step, restored["state"], (restored["data"] if "data" in items else None)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int, Any]:
    """Only the params of the checkpoint at `step` (default: the latest), as host numpy arrays,
    verified against their fingerprints.

    For a frozen model that another run reads (the image tasks' tokenizer): the optimizer state, whose
    structure depends on the writing run's optimizer config, is not read, and no mesh is needed; numpy
    leaves also stay constants when first touched inside a trace. `abstract_params` gives the expected
    paths and shapes (e.g. `nn.unbox(jax.eval_shape(model.init, ...))`); a checkpoint of other params
    is an error. Returns (step, params).
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    target = {"params": abstract_params}
    self._check_params_match(step, target, self._stored_state_tree(step))
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    # partial_restore: read the `params` subtree of the stored state and skip step and opt_state.
    restored = self._read(step, {"state": ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)})
    params = restored["state"]["params"]
    self._verify(step, restored, {"state": {"params": params}})
    return step, params

  def _stored_state_tree(self, step: int):
    """The stored `state` item's tree of array metadata, or None when it cannot be read (the restore
    itself then says why)."""
    try:
      return self._manager.item_metadata(step)["state"].tree
    except Exception:  # pylint: disable=broad-except
      return None

  def _read(self, step: int, items: dict) -> dict:
    """manager.restore plus the integrity item; any read failure becomes CheckpointCorruptError."""
    if "integrity" in self._item_names(step):
      items = {**items, "integrity": ocp.args.JsonRestore()}
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # tensorstore/orbax/json raise many types
      raise CheckpointCorruptError(step, self.directory, f"cannot be read: {_describe_error(e)}") from e

  def _verify(self, step: int, restored: dict, arrays: dict) -> None:
    stored = restored.get("integrity")
    if stored is None:
      logging.warning("Checkpoint step %d in %s has no fingerprints (written before integrity checks): "
                      "restored unverified.", step, self.directory)
      return
    if stored.get("algorithm") != integrity.ALGORITHM:
      raise CheckpointCorruptError(step, self.directory, f"has fingerprints of an unknown algorithm "
                                   f"{stored.get('algorithm')!r} (expected {integrity.ALGORITHM!r})")
    # Fingerprints are keyed by the saved `state` tree's paths; `arrays` is {"state": restored subtree}.
    actual = {k.replace("['state']", "", 1): v for k, v in integrity.fingerprint_tree(arrays).items()}
    wrong = integrity.mismatches(stored.get("state", {}), actual)
    if wrong:
      raise CheckpointCorruptError(
          step, self.directory, f"read back other values than were saved: {len(wrong)} of {len(actual)} "
          f"arrays differ from their fingerprints ({'; '.join(wrong[:3])}). Its files changed on disk "
          f"after the save (bit rot, a partial copy, or two writers)")

  def _check_params_match(self, step: int, abstract_state: Any, stored_tree: Any, config: Any = None) -> None:
    """The stored params must have the target's paths and shapes. Scanned and unscanned stacks
    (`StackConfig.scan`) name their params differently (`.../layers/...` with a leading layer axis vs
    `.../layer_0/...`): restoring one into the other must stop with the fix, not load the wrong layout.
    Any other difference names the config fields that differ from the checkpoint's own config.
    `stored_tree`: `_stored_state_tree(step)`, read once by the caller."""
    if not isinstance(abstract_state, dict) or "params" not in abstract_state:
      return
    if not isinstance(stored_tree, dict) or "params" not in stored_tree:  # unreadable: the read will say so
      return
    stored, target = _param_shapes(stored_tree["params"]), _param_shapes(abstract_state["params"])
    if stored == target:
      return
    missing, unexpected = sorted(set(target) - set(stored)), sorted(set(stored) - set(target))
    reshaped = [f"{p}: stored {stored[p]}, expected {target[p]}" for p in sorted(set(stored) & set(target))
                if stored[p] != target[p] and None not in (stored[p], target[p])]
    if not missing and not unexpected and not reshaped:
      return  # only shapes the metadata did not record
    where = f"The checkpoint at step {step} in {self.directory}"
    scanned_stored = any("/layers/" in f"/{p}/" for p in stored)
    scanned_target = any("/layers/" in f"/{p}/" for p in target)
    if scanned_stored != scanned_target:
      raise ValueError(
          f"{where} was written with {'scanned' if scanned_stored else 'unscanned'} layers, but this config "
          f"builds {'scanned' if scanned_target else 'unscanned'} ones (e.g. the checkpoint has "
          f"{(unexpected or ['?'])[0]!r}, this model expects {(missing or ['?'])[0]!r}). Set model.<stack>.scan="
          f"{scanned_stored} for the stacks as when it was written, or convert the params with "
          f"hat_jax.models.layers.{'unscan' if scanned_stored else 'scan'}_layer_params.")
    fields = ""
    if config is not None:
      changed = self.config_changes(step, config)
      fields = (f" It was written with a different config: {'; '.join(changed[:12])}"
                f"{' ...' if len(changed) > 12 else ''}." if changed else
                " Its saved config equals this one, so the checkpoint was copied in from another run.")
    raise ValueError(
        f"{where} does not hold this model's params: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(reshaped)} of other shapes "
        f"(e.g. {reshaped[:3]}).{fields} Resume with the config it was written with (saved next to it, "
        f"checkpoints/<step>/config), or start a fresh --workdir.")

  def config_changes(self, step: int, config: Any) -> list[str]:
    """'field: checkpoint value -> this value' for every config field that differs from the config
    saved with the checkpoint at `step` ([] when it has none)."""
    try:
      saved = self.restore_config(step)
    except Exception:  # pylint: disable=broad-except  # an old or unreadable config item: nothing to compare
      return []
    before, after = _flatten(saved), _flatten(_config_to_json(config))
    return [f"{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]

  def restore_newest_verified(self, abstract_state: Any, *, on_bad: str, quarantine: str,
                              config: Any = None, with_data: bool = True) -> tuple[int, Any, dict | None] | None:
    """Restore the newest checkpoint, verified; None when there is none.

    If it cannot be read or fails verification, `on_bad="refuse"` raises CheckpointCorruptError naming
    the newest earlier checkpoint that does verify and the flag that resumes from it;
    `on_bad="fallback"` resumes from that one and moves the newer, bad ones into `quarantine`
    (never deleted). Every process must call this (the restores are collective)."""
    if on_bad not in ("refuse", "fallback"):
      raise ValueError(f"config.train.on_bad_checkpoint={on_bad!r}: expected 'refuse' or 'fallback'.")
    bad: list[CheckpointCorruptError] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step, config=config, with_data=with_data)
        error = None
      except CheckpointCorruptError as e:
        restored, error = None, e
      if not distributed.all_processes_agree(error is None):  # e.g. one process's data state is damaged
        bad.append(error or CheckpointCorruptError(step, self.directory, "failed on another process"))
        continue
      if not bad:
        return restored
      first = bad[0]
      others = f" (and steps {[e.step for e in bad[1:]]})" if len(bad) > 1 else ""
      if on_bad == "refuse":
        raise CheckpointCorruptError(
            first.step, self.directory,
            f"{first.problem}.{others} The newest checkpoint that verifies is step {step}. To resume from "
            f"it, rerun with --config.train.on_bad_checkpoint=fallback: the bad checkpoints are then moved "
            f"to {quarantine}/ (not deleted). To inspect them first, leave the workdir as it is.") from first
      moved = self._quarantine([e.step for e in bad], quarantine)
      logging.warning("Checkpoint(s) %s in %s failed verification (%s); moved to %s. Resuming from step %d, "
                      "which verified.", [e.step for e in bad], self.directory, first.problem, moved, step)
      return restored
    if not bad:
      return None
    raise CheckpointCorruptError(
        bad[0].step, self.directory,
        f"{bad[0].problem}. No earlier checkpoint verifies either (steps {[e.step for e in bad]}): restore "
        f"the checkpoints from a copy, or start a fresh --workdir.") from bad[0]

  def _quarantine(self, steps: list[int], quarantine: str) -> list[str]:
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    moved = []
    if jax.process_index() == 0:
      epath.Path(quarantine).mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = epath.Path(quarantine) / f"{step}-{stamp}"
        (epath.Path(self.directory) / str(step)).rename(target)
        moved.append(str(target))
    distributed.sync_processes("hat_jax.checkpoint.quarantine")
    self._manager.reload()
    return moved

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _item_names(self, step: int) -> list[str]:
    path = epath.Path(self.directory) / str(step)
    return [p.name for p in path.iterdir() if p.is_dir()] if path.exists() else []

  def wait(self) -> None:
    """Block until the save in flight is committed; CheckpointSaveError if it failed."""
    self._raise_save_errors(self._manager.wait_until_finished)
    self._saving = None

  def close(self) -> None:
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:  # orbax re-raises a failed save's error: it was raised already
          raise

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def resolve_directory(directory: str) -> str:
  """Local paths made absolute (orbax wants them so); remote ones (gs://...) unchanged: os.path.abspath
  would turn "gs://b/run" into a local "<cwd>/gs:/b/run"."""
  return directory if "://" in str(directory) else os.path.abspath(directory)


def _param_shapes(tree) -> dict[str, tuple | None]:
  """{"a/b/kernel": shape} of a params tree (abstract arrays or orbax metadata; None: not recorded)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path):
          (tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None) for path, leaf in leaves}


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def _describe_error(e: BaseException) -> str:
  """One line for an orbax/tensorstore error: its type, the OS error behind it (tensorstore reports
  `os_error_code='28'`), and the start of its message (they can be pages long)."""
  text = " ".join(str(e).split())
  code = getattr(e, "errno", None)
  if code is None:
    match = re.search(r"os_error_code='?(\d+)", text)
    code = int(match.group(1)) if match else None
  cause = f" [{errno.errorcode.get(code, code)}: {os.strerror(code)}]" if code else ""
  return f"{type(e).__name__}{cause}: {text[:400]}{'...' if len(text) > 400 else ''}"


def _config_to_json(config) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))
