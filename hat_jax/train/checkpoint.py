"""Checkpoints: the ONLY module that imports orbax (a later move to orbax v1 stays local).

A checkpoint at step s holds three items (orbax v0 `CheckpointManager`, always with `args=`):
  * `state`: {"step", "params", "opt_state"}, saved with PyTreeSave and restored with
    PyTreeRestore onto an abstract target whose leaves carry the *current* mesh's shardings, so a
    run may resume on a different mesh or device count.
  * `data`: the training iterator's `get_state()` dict, one JSON file per process
    (`process_<i>-of-<n>.json`) because each process reads its own data slice.
  * `config`: the run's config as JSON (for humans and tools; resume uses the live config).

Every process must call `save`/`restore` (orbax coordinates them); only the primary writes shared files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class _DataStateHandler(ocp.CheckpointHandler):
  """Per-process JSON of a checkpointable iterator's state dict (grain's handler, minus its type checks:
  any `get_state() -> dict` iterator works)."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    self._file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> dict:
    path = self._file(directory)
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
      raise ValueError(
          f"No data-iterator state for process {jax.process_index()} of {jax.process_count()} in {directory} "
          f"(found {found}). The checkpoint was written with a different process count; resume with the "
          f"same number of processes, or start a fresh --workdir.")
    return json.loads(path.read_text())

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


# Replicated arrays are written cooperatively by their replicas ("replica-parallel"), which slices
# each array per device with a compiled op per shape and device. Worth it for big arrays, pure
# overhead (seconds of compiles on the first save) for small ones: only split slices above this size.
_MIN_REPLICA_SLICE_BYTES = 4 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  import numpy as np  # pylint: disable=g-import-not-at-top
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
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
    handlers.add("config", ocp.args.JsonSave, ocp.handlers.JsonCheckpointHandler())
    handlers.add("config", ocp.args.JsonRestore, ocp.handlers.JsonCheckpointHandler())
    self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handlers)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None, config: Any = None) -> bool:
    """Save (asynchronously when enabled); arrays are copied off-device before this returns, so the
    caller may donate `state` to the next step right away."""
    items = {"state": ocp.args.PyTreeSave(state)}
    if data_state is not None:
      items["data"] = DataStateSave(data_state)
    if config is not None:
      items["config"] = ocp.args.JsonSave(_config_to_json(config))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, step: int | None = None, *, with_data: bool = True
              ) -> tuple[int, Any, dict | None]:
    """Restore `state` onto `abstract_state` (ShapeDtypeStructs with shardings) and the data state.

    Returns (step, state, data_state or None).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    self._check_params_match(step, abstract_state)
    items = {"state": ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
    stored = set(self._item_names(step))
    if with_data and "data" in stored:
      items["data"] = DataStateRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored["state"], (restored["data"] if "data" in items else None)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int, Any]:
    """Only the params of the checkpoint at `step` (default: the latest), as host numpy arrays.

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
    self._check_params_match(step, target)
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    # partial_restore: read the `params` subtree of the stored state and skip step and opt_state.
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)))["state"]["params"]
    # Orbax returns the stored shapes whatever the target says: compare, so wrong params never load.
    wrong = [line for line in jax.tree_util.tree_leaves(jax.tree_util.tree_map_with_path(
        lambda path, want, got: None if got.shape == tuple(want.shape) else
        f"{jax.tree_util.keystr(path)}: stored {got.shape}, expected {tuple(want.shape)}", abstract_params, restored))]
    if wrong:
      raise ValueError(f"The checkpoint at step {step} in {self.directory} holds params of other shapes than "
                       f"expected ({len(wrong)}, e.g. {wrong[:3]}): it was written by a different model config.")
    return step, restored

  def _check_params_match(self, step: int, abstract_state: Any) -> None:
    """The stored params must have the target's paths. Scanned and unscanned stacks
    (`StackConfig.scan`) name their params differently (`.../layers/...` with a leading layer axis vs
    `.../layer_0/...`): restoring one into the other must stop with the fix, not load the wrong layout."""
    if not isinstance(abstract_state, dict) or "params" not in abstract_state:
      return
    try:
      stored_tree = self._manager.item_metadata(step)["state"].tree
    except Exception:  # pylint: disable=broad-except  # no metadata to compare: orbax's own checks remain
      return
    if not isinstance(stored_tree, dict) or "params" not in stored_tree:
      return
    stored, target = _param_paths(stored_tree["params"]), _param_paths(abstract_state["params"])
    if stored == target:
      return
    missing, unexpected = sorted(target - stored), sorted(stored - target)
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
    raise ValueError(
        f"{where} does not hold this model's params: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the config it was written with "
        f"(saved next to it, checkpoints/<step>/config), or start a fresh --workdir.")

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _item_names(self, step: int) -> list[str]:
    path = epath.Path(self.directory) / str(step)
    return [p.name for p in path.iterdir() if p.is_dir()] if path.exists() else []

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def resolve_directory(directory: str) -> str:
  """Local paths made absolute (orbax wants them so); remote ones (gs://...) unchanged: os.path.abspath
  would turn "gs://b/run" into a local "<cwd>/gs:/b/run"."""
  return directory if "://" in str(directory) else os.path.abspath(directory)


def _param_paths(tree) -> set[str]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
          for path, _ in leaves}


def _config_to_json(config) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))
