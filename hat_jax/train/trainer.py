"""The generic trainer: any registered `Task` (see `hat_jax.train.task`) trains, evaluates and samples here.

A run is a function of (config, seed): params come from `fold_in(key(seed), 0)`, the per-step
training rng is `fold_in(fold_in(key(seed), 1), step)`, and the data order is the task iterator's
(seeded, checkpointed). Resuming from `<workdir>/checkpoints` therefore continues bit-identically.

Loop shape (nanodo / MaxText): step t is dispatched before the host blocks on step t-1's metrics,
so the device always has queued work while the host checks for NaN, logs and reads the next batch.

Per run directory (`workdir`): `checkpoints/<step>/{state,data,config,integrity}` (see `checkpoint.py`),
`metrics.jsonl` and `tensorboard/` (process 0 only). Train metrics are window means over
`log_every` steps plus `<count>_per_sec` for each of `task.throughput_counts`, `steps_per_sec`,
`tflops_per_sec_per_device` (XLA-counted) and `hfu` on known accelerators, and for tasks with an
analytic count (`hat_jax.train.flops`: hat, bytes, block_transformer, vanilla_lm, var) `model_tflops_per_sec_per_device` and `mfu`; eval metrics are means
over `task.eval_batches()` except `task.sum_metrics`, which are summed.

Failure handling: a non-finite loss or gradient norm raises FloatingPointError naming the step, and
no checkpoint is ever written from a state that such an update produced; SIGTERM writes a checkpoint
at the next step boundary and raises `Preempted` (the CLI exits 143). Every restore is verified against
the checkpoint's fingerprints; a damaged newest checkpoint stops the run naming the newest one that
verifies, or with `train.on_bad_checkpoint="fallback"` resumes from it (`checkpoint.py`). A failed save
raises `CheckpointSaveError` and is never resumed from. `<workdir>/run.lock` keeps a second run out of a
live workdir (`run_lock.py`). README "Failure handling" lists each fault with its test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from hat_jax import distributed, sharding
from hat_jax.kernels import auto as auto_attention
from hat_jax.train import checkpoint as ckpt_lib
from hat_jax.train import flops as flops_lib
from hat_jax.train import metrics as metrics_lib
from hat_jax.train import optim, registry, run_lock
from hat_jax.train.task import Task

State = dict[str, Any]  # {"step": int32 scalar, "params": pytree, "opt_state": optax state}

# Key streams split off the run's seed (fixed, so checkpoints and reruns agree).
_PARAMS_STREAM, _TRAIN_STREAM, _EVAL_STREAM, _SAMPLE_STREAM = 0, 1, 2, 3


class Preempted(Exception):
  """Raised by `train` after a SIGTERM (preemption) was caught and a checkpoint was written."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"Preempted: checkpoint saved at step {step} in {directory}; rerun the same command "
                     f"(same --workdir) to resume.")
    self.step = step


@dataclasses.dataclass
class Run:
  """Everything derived from a config: task, mesh, optimizer, abstract state and its shardings."""

  config: Any
  task: Task
  mesh: jax.sharding.Mesh
  rules: sharding.Rules
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: State  # unboxed ShapeDtypeStructs
  state_shardings: State
  init_fn: Callable[[jax.Array], State]  # jitted, returns sharded state
  num_params: int

  def use_mesh(self):
    """Mesh and logical rules in context: activation constraints apply, and Pallas kernels run per device
    (`hat_jax.kernels.sharded`)."""
    return sharding.use_mesh(self.mesh, self.rules)

  def rng(self, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(int(self.config.seed)), stream)

  def abstract_target(self) -> State:
    """Abstract state with this mesh's shardings: the restore target (reshards as needed)."""
    return ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)


def build(config, devices=None) -> Run:
  """Resolve the task, mesh, rules and optimizer, and derive sharded state creation. No arrays yet.

  `devices` restricts the mesh to a subset (default: all devices), e.g. for tests or side jobs.
  """
  for block in ("train", "mesh"):
    if block not in config:
      raise ValueError(f"config has no '{block}' block; build configs with configs/common.py "
                       f"(common.base_config(...)).")
  task = registry.make_task(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.get("logical_axis_rules", ()))
  tx = optim.make_optimizer(config.train)
  schedule = optim.learning_rate_schedule(config.train)
  dtype = optim.param_dtype(config.train)

  def init_boxed(rng):
    params = optim.cast_params(task.init_params(rng), dtype)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  params_rng = jax.random.fold_in(jax.random.key(int(config.seed)), _PARAMS_STREAM)
  # Init runs under the logical rules but without a mesh in context: placement comes from
  # `out_shardings`, and initialisers need no activation constraints.
  with nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init_boxed, params_rng)
  shardings = sharding.state_shardings(abstract_boxed, mesh, rules, str(config.mesh.get("indivisible", "error")))
  abstract = nn.unbox(abstract_boxed)
  unannotated = sharding.unannotated_params(abstract_boxed["params"])
  if unannotated:
    logging.warning("Params without logical axis names (replicated on every device): %s", unannotated)
  num_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract["params"]))
  jitted_init = jax.jit(lambda rng: nn.unbox(init_boxed(rng)), out_shardings=shardings)

  def init_fn(rng):
    with nn.logical_axis_rules(rules):
      return jitted_init(rng)
  return Run(config, task, mesh, rules, tx, schedule, abstract, shardings, init_fn, num_params)


def _global_norm(tree) -> jax.Array:
  # optax.tree.norm replaces the deprecated optax.global_norm (older optax lacks it).
  tree_lib = getattr(optax, "tree", None)
  return tree_lib.norm(tree) if hasattr(tree_lib, "norm") else optax.global_norm(tree)


def make_train_step(run: Run, batch_shardings):
  task, tx, seed = run.task, run.tx, int(run.config.seed)

  def train_step(state: State, batch) -> tuple[State, dict]:
    step = state["step"]
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TRAIN_STREAM), step)
    (loss, task_metrics), grads = jax.value_and_grad(
        lambda p: task.loss(p, batch, rng), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {**task_metrics, "loss": loss, "grad_norm": _global_norm(grads),
               "param_norm": _global_norm(params), "learning_rate": run.schedule(step)}
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

  replicated = NamedSharding(run.mesh, PartitionSpec())
  return jax.jit(train_step, in_shardings=(run.state_shardings, batch_shardings),
                 out_shardings=(run.state_shardings, replicated), donate_argnums=0)


def _compile_train_step(run: Run, state: State, global_batch, writer: metrics_lib.MetricWriter):
  """Compile ahead of time (once): report XLA-counted and analytic FLOPs and per-device memory before step 0."""
  jitted = make_train_step(run, jax.tree_util.tree_map(lambda x: x.sharding, global_batch))
  compiled = jitted.lower(state, global_batch).compile()
  per_device = metrics_lib.compiled_flops(compiled)
  peak = metrics_lib.device_peak_flops(jax.devices()[0].device_kind)
  line = f"train step compiled: {metrics_lib.memory_summary(compiled)}"
  if per_device:
    line += f"; {per_device / 1e9:.3f} GFLOPs/device/step (XLA count)"
  if peak:
    line += f"; hfu against {peak[0] / 1e12:.0f} TFLOP/s per device ({peak[1]})"
  analytic = flops_lib.step_flops_or_none(run.config, global_batch)  # model FLOPs of the global batch
  if analytic:
    line += (f"; {analytic / 1e9:.3f} GFLOPs/step analytic (model); "
             f"{flops_lib.describe_peak(jax.devices()[0].device_kind)}")
  writer.print(line)
  for choice_line in auto_attention.format_choices(auto_attention.choices()):  # what attention_impl="auto" chose
    writer.print(choice_line)
  return compiled, {"per_device": per_device, "peak": peak[0] if peak else None, "analytic": analytic}


def _make_eval_step(run: Run):
  task, seed = run.task, int(run.config.seed)

  def eval_step(params, batch):
    rng = jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM)
    loss, task_metrics = task.loss(params, batch, rng)
    return {**task_metrics, "loss": loss}

  # Inputs arrive already placed (params from the state, batches via `global_batch_from_full`).
  return jax.jit(eval_step)


def _run_eval(run: Run, eval_step, params) -> dict[str, float]:
  acc = metrics_lib.MeanAccumulator(run.task.sum_metrics)
  for batch in run.task.eval_iterator():
    out = eval_step(params, sharding.global_batch_from_full(batch, run.mesh, run.rules))
    acc.add(jax.device_get(out))
  return acc.result() if acc.count else {}


class _PreemptionWatch:
  """SIGTERM -> save and stop. Multi-process runs use jax's preemption sync point (installed by
  `jax.distributed.initialize`), so every process stops at the same step and saves together."""

  def __init__(self):
    self.flag = threading.Event()
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag.is_set()


def _check_train_config(config, run: Run) -> None:
  t = config.train
  for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
    if int(t[name]) < 1:
      raise ValueError(f"config.train.{name} must be >= 1, got {t[name]}.")
  shards, procs = sharding.batch_shards(run.mesh, run.rules), jax.process_count()
  if int(t.batch_size) % shards or int(t.batch_size) % procs:
    raise ValueError(
        f"config.train.batch_size={t.batch_size} must be divisible by the {shards} batch shards "
        f"(mesh {dict(run.mesh.shape)}, 'batch' rule) and by the {procs} processes.")


def train(config, workdir: str, *, stop_at_step: int | None = None, devices=None) -> dict[str, float]:
  """Train `config` in `workdir`, resuming from its latest checkpoint. Returns the final metrics
  (`train/<name>` from the last log window, `eval/<name>` from the final eval, and `step`).

  `stop_at_step` ends this invocation early (after checkpointing) without changing the run, e.g.
  for time-sliced jobs; rerunning continues to `config.train.steps`. `devices`: see `build`.
  Raises `Preempted` after SIGTERM (checkpoint written) and FloatingPointError on a NaN/Inf loss.
  """
  run = build(config, devices)
  _check_train_config(config, run)
  total = int(config.train.steps)
  end = total if stop_at_step is None else min(total, int(stop_at_step))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  logging.info("process %d/%d, %d local / %d global devices, mesh %s, %s params", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), dict(run.mesh.shape),
               f"{run.num_params:,}")

  iterator = run.task.train_iterator(int(config.seed), jax.process_index(), jax.process_count())
  with _hold_workdir(config, workdir) as lock, \
      ckpt_lib.Checkpointer(ckpt_dir, keep=int(config.train.keep_checkpoints)) as ckpt:
    restored = _restore_verified(ckpt, run, workdir)
    if restored is not None:
      step, state, data_state = restored
      step = int(step)
      if "opt_state" not in state:  # a converted checkpoint (hat_jax.convert): params only
        state = {**state, "opt_state": jax.jit(run.tx.init, out_shardings=run.state_shardings["opt_state"])(
            state["params"])}
        logging.warning("The checkpoint at step %d holds params only (converted); starting a fresh optimizer "
                        "state.", step)
      if data_state is not None:
        iterator.set_state(data_state)
      logging.info("Resumed from %s at step %d (verified).", ckpt_dir, step)
      changed = ckpt.config_changes(step, config)
      if changed:
        logging.warning("Resuming with config fields changed since the checkpoint: %s", "; ".join(changed))
    else:
      state, step = run.init_fn(run.rng(_PARAMS_STREAM)), 0
    writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0, total_steps=total,
                                      initial_step=step)
    try:
      writer.print(f"{type(run.task).__name__}: {run.num_params:,} params, mesh {dict(run.mesh.shape)}, "
                   f"steps {step}->{end} of {total}")
      with run.use_mesh():
        return _loop(run, state, step, end, iterator, ckpt, writer, lock)
    finally:
      writer.close()


def _restore_verified(ckpt: ckpt_lib.Checkpointer, run: Run, workdir: str, *, with_data: bool = True):
  """The newest checkpoint that verifies, under the run's `train.on_bad_checkpoint` policy (None if none)."""
  return ckpt.restore_newest_verified(
      run.abstract_target(), on_bad=str(run.config.train.on_bad_checkpoint), config=run.config,
      quarantine=os.path.join(workdir, "checkpoints_quarantine"), with_data=with_data)


@contextlib.contextmanager
def _hold_workdir(config, workdir: str):
  """Hold `<workdir>/run.lock` for the run (process 0 takes it; every process learns the outcome)."""
  t = config.train
  lock, error = None, None
  if jax.process_index() == 0:
    lock = run_lock.RunLock(workdir, stale_seconds=float(t.lock_stale_seconds),
                            heartbeat_seconds=float(t.lock_heartbeat_seconds))
    try:
      lock.acquire()
    except run_lock.WorkdirLockedError as e:
      lock, error = None, e
  if not distributed.all_processes_agree(error is None):
    raise error or run_lock.WorkdirLockedError(f"Process 0 could not lock {workdir}; see its log.")
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()


def _loop(run: Run, state: State, step: int, end: int, iterator, ckpt: ckpt_lib.Checkpointer,
          writer: metrics_lib.MetricWriter, lock: run_lock.RunLock | None) -> dict[str, float]:
  config, t, task = run.config, run.config.train, run.task
  total = int(t.steps)
  log_every, eval_every, ckpt_every = int(t.log_every), int(t.eval_every), int(t.checkpoint_every)
  eval_step = _make_eval_step(run)
  train_step, flops = None, {}
  window = metrics_lib.MeanAccumulator()
  counts: dict[str, float] = {}
  # Throughput window: starts after the first (compiling) step; time spent saving and evaluating is
  # "paused" and excluded, so units/s measure training alone (big_vision's Chrono does the same).
  clock = {"start": None, "steps": 0, "paused": 0.0}
  last_ckpt = ckpt.latest_step()
  result: dict[str, float] = {}

  def process(pending) -> None:
    """Pull one step's metrics (blocking on that step only), check them, log at window ends."""
    nonlocal result
    s, device_metrics, batch_counts = pending
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    bad = {k: v for k, v in values.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
    if bad:
      # Checkpoints are only written after a finite step, and a resume verifies what it reads.
      where = (f"the newest checkpoint is step {last_ckpt} in {ckpt.directory} (written after a finite step)"
               if last_ckpt is not None else "no checkpoint was written yet")
      raise FloatingPointError(
          f"Non-finite {bad} at step {s} (loss on the params after {s} updates); training stopped and "
          f"{where}. Lower config.train.learning_rate, raise warmup_steps, or inspect the batch at step {s}.")
    window.add(values)
    now = time.perf_counter()
    if clock["start"] is None:
      clock["start"], clock["paused"] = now, 0.0
    else:
      clock["steps"] += 1
      for k, v in batch_counts.items():
        counts[k] = counts.get(k, 0.0) + v
    writer.advance(1, {"loss": values["loss"]})
    if (s + 1) % log_every == 0 or s + 1 == total:
      logged = {k: v for k, v in window.result().items()}
      elapsed = now - clock["start"] - clock["paused"]
      if clock["steps"] and elapsed > 0:
        logged["steps_per_sec"] = clock["steps"] / elapsed
        logged.update({f"{k}_per_sec": v / elapsed for k, v in counts.items()})
        if flops["per_device"]:
          logged["tflops_per_sec_per_device"] = flops["per_device"] * logged["steps_per_sec"] / 1e12
          if flops["peak"]:
            logged["hfu"] = logged["tflops_per_sec_per_device"] * 1e12 / flops["peak"]
        if flops["analytic"]:
          model_flops_per_device = flops["analytic"] * logged["steps_per_sec"] / run.mesh.devices.size
          logged["model_tflops_per_sec_per_device"] = model_flops_per_device / 1e12
          if flops["peak"]:
            logged["mfu"] = model_flops_per_device / flops["peak"]
      writer.write(s + 1, "train", logged)
      result = {f"train/{k}": v for k, v in logged.items()}
      window.reset()
      counts.clear()
      clock["start"], clock["steps"], clock["paused"] = now, 0, 0.0

  pending = None
  with _PreemptionWatch() as watch:
    while step < end:
      batch = next(iterator)
      batch_counts = {k: float(v) * jax.process_count() for k, v in task.throughput_counts(batch).items()}
      global_batch = sharding.global_batch_from_local(batch, run.mesh, run.rules)
      if train_step is None:
        train_step, flops = _compile_train_step(run, state, global_batch, writer)
      state, device_metrics = train_step(state, global_batch)
      if pending is not None:
        process(pending)
      pending, step = (step, device_metrics, batch_counts), step + 1
      preempted = watch.reached(step)
      save = step % ckpt_every == 0 or step == end or preempted
      do_eval = step % eval_every == 0 or step == total
      if save or do_eval or step % log_every == 0:
        process(pending)  # a checkpoint is only written once the update that made it is known finite
        pending = None
      pause_start = time.perf_counter()  # after process(): the step itself is done
      if save and step != last_ckpt:
        _check_lock(lock)
        ckpt.save(step, state, iterator.get_state(), config)
        last_ckpt = step
      if do_eval:
        eval_metrics = _run_eval(run, eval_step, state["params"])
        if eval_metrics:
          writer.write(step, "eval", eval_metrics)
          result.update({f"eval/{k}": v for k, v in eval_metrics.items()})
      if save or do_eval:
        clock["paused"] += time.perf_counter() - pause_start
      if preempted:
        ckpt.wait()
        raise Preempted(step, ckpt.directory)
    if pending is not None:
      process(pending)
  ckpt.wait()
  result["step"] = float(step)
  return result


def _check_lock(lock: run_lock.RunLock | None) -> None:
  """Stop before writing a checkpoint if process 0's lock was taken over (every process stops)."""
  if not distributed.all_processes_agree(lock is None or lock.lost is None):
    if lock is not None:
      lock.check()
    raise run_lock.LockLostError("Process 0 lost the run lock; see its log.")


def restore_params(config, workdir: str, devices=None) -> tuple[Run, Any, int]:
  """Build the run and restore the latest checkpoint's params (sharded onto this mesh)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  with ckpt_lib.Checkpointer(ckpt_dir, keep=None) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint found in {ckpt_dir}. Train first (--mode=train or --mode=train_and_sample with "
          f"the same --workdir and config).")
    run = build(config, devices)
    with run.use_mesh():
      step, state, _ = _restore_verified(ckpt, run, workdir, with_data=False)
  return run, state["params"], int(step)


def evaluate(config, workdir: str, devices=None) -> dict[str, float]:
  """Evaluate the latest checkpoint in `workdir` on `task.eval_batches()`; logs split "eval"."""
  run, params, step = restore_params(config, workdir, devices)
  with run.use_mesh():
    metrics = _run_eval(run, _make_eval_step(run), params)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0, progress=False)
  try:
    writer.write(step, "eval", metrics)
  finally:
    writer.close()
  return {**{f"eval/{k}": v for k, v in metrics.items()}, "step": float(step)}


def generate(config, workdir: str, devices=None) -> str:
  """Restore the latest checkpoint and return `task.generate(params, rng)` (the CLI's --mode=sample)."""
  run, params, _ = restore_params(config, workdir, devices)
  # Sampling batches are small (a few prompts) and need not divide the mesh, so activations are left
  # unconstrained: rules without a mesh make the model's logical constraints no-ops.
  with nn.logical_axis_rules(run.rules):
    return run.task.generate(params, run.rng(_SAMPLE_STREAM))


def score(config, workdir: str, *, text_file: str | None = None, choices_file: str | None = None,
          batch_size: int = 8, devices=None) -> dict[str, float]:
  """Restore the latest checkpoint and score it (`hat_jax.score`; the CLI's --mode=score): bits per byte of
  the UTF-8 `text_file` ("text/bits_per_byte", "text/bytes", "text/nll_bits") and lm-eval multiple-choice
  accuracy over the JSONL `choices_file` ("choices/acc", "choices/acc_norm", "choices/items"). Inputs are
  checked before the checkpoint is read."""
  from hat_jax import score as score_lib  # pylint: disable=g-import-not-at-top

  if not text_file and not choices_file:
    raise ValueError("score needs a text file (bits per byte) and/or a JSONL file of choices (multiple choice).")
  if text_file:
    score_lib.read_text(text_file)
  if choices_file:
    score_lib.read_choices(choices_file)
  run, params, step = restore_params(config, workdir, devices)
  out = {"step": float(step)}
  # As in `generate`: scoring batches need not divide the mesh, so activations are left unconstrained.
  with nn.logical_axis_rules(run.rules):
    scorer = score_lib.Scorer(run.task, params, batch_size=batch_size)
    if text_file:
      out.update({f"text/{k}": v for k, v in score_lib.bits_per_byte(scorer, text_file).items()})
    if choices_file:
      out.update({f"choices/{k}": v for k, v in score_lib.multiple_choice(scorer, choices_file).items()})
  return out
