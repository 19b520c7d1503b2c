"""Ahead-of-time compilation for a device topology that is not present (MaxText's train_compile idea).

`jax.experimental.topologies` describes the chips of a TPU slice (`hat_jax.topology`) without any of
them being attached; a mesh built on those device descriptions lets `jit(...).lower(...).compile()`
run XLA's TPU compiler, and the Mosaic compiler for our Pallas kernels, on a CPU host. What comes out
is the real per-chip program: it either compiles or not, and `memory_analysis()` / `cost_analysis()`
say what it needs per chip. Nothing is allocated: state, batches and caches are ShapeDtypeStructs.

  run = trainer.build(config, devices=topology_devices)
  report = compile_train_step(run, batch_size)           # the trainer's own jitted step
  reports = compile_decode_steps(run, decode_batch)      # each task's cached generation steps

Every report carries XLA's numbers (per chip), the chip's HBM and whether the program fits it, and a
roofline step-time ESTIMATE: max(compute time at peak, HBM traffic at peak bandwidth), ignoring
collectives, overlap and kernel efficiency. XLA counts a Pallas call as zero FLOPs, so compute time uses
the larger of XLA's count and the analytic hardware FLOPs (`hat_jax.train.flops` model FLOPs plus one
forward per fully rematerialised stack); the implied MFU is model FLOPs over (estimated time x peak). Estimates are labelled as such everywhere they appear.
XLA's cost analysis counts a while loop's body once: for scanned stacks (`StackConfig.scan`) its FLOPs
and bytes are those of one layer per loop, not of the step. The compute term is then the analytic count
(every layer), and the HBM term is a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import traceback
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

from hat_jax import sharding
from hat_jax.models.layers import KV_CACHE_AXES, KVCache
from hat_jax.train import flops as flops_lib
from hat_jax.train import trainer

ESTIMATE_BASIS = ("roofline estimate: max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth) per chip, with FLOPs "
                  "the larger of XLA's count (Pallas calls count 0; a scanned loop's body counts once) and the "
                  "analytic model FLOPs plus one forward per fully rematerialised stack; ignores collectives, "
                  "overlap and kernel efficiency, so the time is a lower bound and the MFU an upper bound")


@dataclasses.dataclass
class Hardware:
  """What the estimates need of one chip (None where unknown)."""

  hbm_bytes: float | None = None
  peak_flops: float | None = None  # dense bf16 FLOP/s
  hbm_bandwidth: float | None = None  # bytes/s


@dataclasses.dataclass
class StepReport:
  """One compiled program, per chip. Byte counts are XLA's `memory_analysis()`; `peak_bytes` = arguments
  + outputs - aliased (donated) + temporaries + code."""

  name: str
  compiled: bool
  compile_seconds: float
  error: str | None = None
  memory: dict[str, float] = dataclasses.field(default_factory=dict)
  peak_bytes: float | None = None
  hbm_bytes: float | None = None
  fits: bool | None = None
  xla_flops: float | None = None
  xla_bytes_accessed: float | None = None
  xla_optimal_seconds: float | None = None
  model_flops: float | None = None  # analytic, per chip (train step only)
  hardware_flops: float | None = None  # model FLOPs + what remat recomputes (estimate), per chip
  estimated_seconds: float | None = None
  implied_mfu: float | None = None
  kernel_calls: int | None = None  # Pallas kernels in the compiled program (Mosaic / Triton custom calls)

  @property
  def ok(self) -> bool:
    return self.compiled and self.fits is not False


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def fitted_sharding(shape: tuple[int, ...], names: tuple[str | None, ...], mesh, rules) -> NamedSharding:
  """NamedSharding of an array with logical dim `names`, keeping per dim only the longest prefix of its
  mesh axes that divides the dim (a small decode batch is then replicated instead of failing)."""
  spec = nn.logical_to_mesh_axes(names, rules)
  fitted = []
  for size, entry in zip(shape, spec):
    axes = _axes(entry)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    fitted.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return NamedSharding(mesh, PartitionSpec(*fitted))


def arg_shardings(tree, mesh, rules):
  """Shardings for a decode step's non-param arguments: KV caches by their logical axes (with a leading
  "layers" dim when scanned), everything else batch-sharded on its leading dim."""
  def cache(c: KVCache) -> KVCache:
    lead = ("layers",) * (c.k.ndim - 4)
    names = {"k": KV_CACHE_AXES, "v": KV_CACHE_AXES, "positions": ("batch", "cache_length"),
             "segment_ids": ("batch", "cache_length"), "length": ("batch",)}
    return KVCache(**{f: fitted_sharding(getattr(c, f).shape, lead + names[f], mesh, rules) for f in KVCache._fields})

  def other(x):
    return fitted_sharding(x.shape, ("batch",) + (None,) * (len(x.shape) - 1), mesh, rules) if x.shape else \
        NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(lambda x: cache(x) if isinstance(x, KVCache) else other(x), tree,
                      is_leaf=lambda x: isinstance(x, KVCache))


def with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# How a Pallas kernel appears in a compiled program: Mosaic (TPU) and Triton (GPU) custom calls.
KERNEL_MARKERS = ("tpu_custom_call", "__gpu$xla.gpu.triton")


def _analyse(report: StepReport, compiled, hardware: Hardware, model_flops: float | None,
             hardware_flops: float | None = None) -> None:
  text = compiled.as_text() or ""
  report.kernel_calls = sum(text.count(f'custom_call_target="{m}"') for m in KERNEL_MARKERS)
  stats = compiled.memory_analysis()
  if stats is not None:
    report.memory = {
        "arguments": float(stats.argument_size_in_bytes), "outputs": float(stats.output_size_in_bytes),
        "aliased": float(stats.alias_size_in_bytes), "temporaries": float(stats.temp_size_in_bytes),
        "code": float(stats.generated_code_size_in_bytes)}
    m = report.memory
    report.peak_bytes = m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]
  report.hbm_bytes = hardware.hbm_bytes
  if report.peak_bytes is not None and hardware.hbm_bytes:
    report.fits = report.peak_bytes <= hardware.hbm_bytes
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  report.xla_flops = float(cost["flops"]) if cost.get("flops") else None
  report.xla_bytes_accessed = float(cost["bytes accessed"]) if cost.get("bytes accessed") else None
  report.xla_optimal_seconds = float(cost["optimal_seconds"]) if cost.get("optimal_seconds") else None
  report.model_flops = model_flops
  report.hardware_flops = hardware_flops
  flops = max(report.xla_flops or 0.0, hardware_flops or model_flops or 0.0)
  times = []
  if hardware.peak_flops and flops:
    times.append(flops / hardware.peak_flops)
  if hardware.hbm_bandwidth and report.xla_bytes_accessed:
    times.append(report.xla_bytes_accessed / hardware.hbm_bandwidth)
  if times:
    report.estimated_seconds = max(times)
    if model_flops and hardware.peak_flops:
      report.implied_mfu = model_flops / (report.estimated_seconds * hardware.peak_flops)


# "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (96.70G)
# exceeds available HBM (15.75G)." (XLA TPU, compile time)
_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED.*?memory.*?\(([\d.]+[KMGT]?)\).*?available HBM \(([\d.]+[KMGT]?)\)",
                            re.DOTALL)


def _parse_bytes(text: str) -> float:
  units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def _compile(name: str, lower, hardware: Hardware, model_flops: float | None = None,
             log=print, hardware_flops: float | None = None) -> StepReport:
  log(f"[aot] compiling {name} ...")
  start = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:  # pylint: disable=broad-except  # any compiler error is a result to report
    seconds = time.perf_counter() - start
    message = f"{type(e).__name__}: {e}".strip()
    report = StepReport(name, False, seconds, error=message[:4000] + ("\n" + traceback.format_exc()[-2000:]),
                        hbm_bytes=hardware.hbm_bytes)
    oom = _OUT_OF_MEMORY.search(message)
    if oom:  # XLA's TPU compiler checks the chip's HBM itself: a program that cannot fit does not compile
      report.fits = False
      report.peak_bytes = _parse_bytes(oom.group(1))
      report.hbm_bytes = _parse_bytes(oom.group(2))
    log(f"[aot] {name}: {'DOES NOT FIT' if oom else 'FAILED'} after {seconds:.1f}s: {message.splitlines()[0][:400]}")
    return report
  report = StepReport(name, True, time.perf_counter() - start)
  _analyse(report, compiled, hardware, model_flops, hardware_flops)
  log(f"[aot] {name}: compiled in {report.compile_seconds:.1f}s; {describe(report)}")
  return report


def describe(report: StepReport) -> str:
  gib = 1 << 30
  parts = []
  if report.peak_bytes is not None:
    hbm = f" of {report.hbm_bytes / gib:.1f} GiB HBM" if report.hbm_bytes else ""
    verdict = "" if report.fits is None else (" (fits)" if report.fits else " (DOES NOT FIT)")
    parts.append(f"{report.peak_bytes / gib:.2f} GiB per chip{hbm}{verdict}")
  if report.xla_flops:
    parts.append(f"XLA {report.xla_flops / 1e12:.2f} TFLOP/chip")
  if report.model_flops:
    parts.append(f"model {report.model_flops / 1e12:.2f} TFLOP/chip")
  if report.estimated_seconds:
    parts.append(f"est. {report.estimated_seconds * 1e3:.1f} ms/step")
  if report.implied_mfu:
    parts.append(f"est. MFU {100 * report.implied_mfu:.1f}%")
  if report.kernel_calls:
    parts.append(f"{report.kernel_calls} Pallas kernel calls")
  return ", ".join(parts)


def abstract_state(run: trainer.Run):
  return with_shardings(run.abstract_state, run.state_shardings)


def abstract_batch(run: trainer.Run, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  spec = run.task.batch_spec(batch_size)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(run.mesh, run.rules, len(v.shape)))
          for k, v in spec.items()}


def check_batch(run: trainer.Run, batch_size: int) -> None:
  shards = sharding.batch_shards(run.mesh, run.rules)
  if batch_size % shards:
    raise ValueError(f"The global batch ({batch_size} rows) does not divide over the {shards} batch shards of mesh "
                     f"{dict(run.mesh.shape)}. Change --batch_size (or config.train.batch_size) or the mesh.")


def compile_train_step(run: trainer.Run, batch_size: int, hardware: Hardware, log=print) -> StepReport:
  """Compile the trainer's jitted step (params, optimizer, loss, gradients) on abstract state and batch."""
  check_batch(run, batch_size)
  run.task.stub_frozen_inputs()
  batch = abstract_batch(run, batch_size)
  state = abstract_state(run)
  step = trainer.make_train_step(run, jax.tree.map(lambda x: x.sharding, batch))
  chips = run.mesh.devices.size
  model_flops, hardware_flops = train_flops(run.config, batch)

  def lower():
    with run.use_mesh():
      return step.lower(state, batch)
  report = _compile("train", lower, hardware, None if model_flops is None else model_flops / chips, log,
                    None if hardware_flops is None else hardware_flops / chips)
  return report


def compile_fingerprint(run: trainer.Run, hardware: Hardware, log=print) -> StepReport:
  """Compile the checkpoint fingerprint (`hat_jax.train.integrity`) of the sharded train state: what every
  save and restore adds per chip (an HBM-bound reduction; its estimate is bytes / bandwidth)."""
  from hat_jax.train import integrity  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(abstract_state(run))

  def lower():
    with run.use_mesh():
      return integrity.fingerprint_leaves.lower(leaves)
  return _compile("checkpoint fingerprint", lower, hardware, log=log)


def train_flops(config, batch) -> tuple[float | None, float | None]:
  """(model FLOPs, estimated hardware FLOPs) of one training step, or (None, None) without a formula.

  Hardware FLOPs add what rematerialisation recomputes: one more forward of every stack with
  remat="full". "save_dots" policies keep the matmul outputs, so they recompute (almost) no FLOPs in
  this convention ("save_dots_no_batch" also recomputes attention's q.k and p.v, not modelled)."""
  try:
    counts = flops_lib.training_flops(config, batch)
  except (ValueError, KeyError, TypeError):
    return None, None
  stacks = stack_settings(config.model)
  extra = 0.0
  for key, value in counts.items():
    if not key.startswith("forward/"):
      continue
    level = key.split("/", 1)[1]
    stack = stacks.get(level) or (next(iter(stacks.values())) if len(stacks) == 1 and level in ("stack", "blocks")
                                  else None)
    if stack and stack["remat"] == "full":
      extra += value
  return counts["train"], counts["train"] + extra


def compile_decode_steps(run: trainer.Run, batch_size: int, hardware: Hardware, log=print) -> list[StepReport]:
  """Compile each of the task's cached generation steps (`Task.decode_steps`) with sharded params."""
  params = with_shardings(run.abstract_state["params"], run.state_shardings["params"])
  reports = []
  for name, (fn, args) in run.task.decode_steps(batch_size).items():
    args = with_shardings(args, arg_shardings(args, run.mesh, run.rules))
    jitted = jax.jit(fn)

    def lower(jitted=jitted, args=args):
      with run.use_mesh():
        return jitted.lower(params, *args)
    reports.append(_compile(f"decode/{name}", lower, hardware, None, log))
  return reports


def stack_settings(model_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{stack name: {layers, scan, remat}} for every StackConfig-like block of config.model (for reports)."""
  out = {}
  for key, value in dict(model_cfg).items():
    if hasattr(value, "get") and "num_layers" in value:
      out[key] = {"layers": int(value["num_layers"]), "scan": bool(value.get("scan", False)),
                  "remat": str(value.get("remat", "none"))}
  return out


def run(config, topology_name: str, *, num_slices: int = 1, batch_size: int | None = None,
        decode_batch: int | None = None, decode: bool = True, log=print) -> dict[str, Any]:
  """Compile `config`'s train step (and decode steps) for a TPU topology; returns the JSON-able report.

  batch_size: global rows per step (default config.train.batch_size); decode_batch: rows per decode step
  (default one per batch shard). `report["ok"]` is False when a step does not compile or does not fit.
  """
  from hat_jax import topology as topology_lib  # pylint: disable=g-import-not-at-top

  spec = topology_lib.parse_topology(topology_name, num_slices)
  devices = topology_lib.devices(spec)
  hw = spec.hardware
  hardware = Hardware(hw.hbm_bytes, hw.peak_flops, hw.hbm_bandwidth)
  log(f"[aot] {spec.name}: {spec.topology_name} x {spec.num_slices} slice(s) = {spec.num_chips} chips "
      f"({devices[0].device_kind}), {hw.hbm_bytes / 2**30:.1f} GiB HBM and {hw.peak_flops / 1e12:.0f} TFLOP/s bf16 "
      "per chip")
  run_ = trainer.build(config, devices=devices)
  batch_size = int(config.train.batch_size) if batch_size is None else int(batch_size)
  shards = sharding.batch_shards(run_.mesh, run_.rules)
  decode_batch = shards if decode_batch is None else int(decode_batch)
  log(f"[aot] {type(run_.task).__name__}: {run_.num_params:,} params, mesh {dict(run_.mesh.shape)}, global batch "
      f"{batch_size}")
  steps = [compile_train_step(run_, batch_size, hardware, log)]
  if decode:
    steps += compile_decode_steps(run_, decode_batch, hardware, log)
  model = config.model
  return {
      "topology": spec.name, "topology_name": spec.topology_name, "num_slices": spec.num_slices,
      "chips": spec.num_chips, "device_kind": devices[0].device_kind,
      "hardware": {"hbm_bytes": hw.hbm_bytes, "peak_bf16_flops": hw.peak_flops, "hbm_bandwidth": hw.hbm_bandwidth,
                   "source": hw.source},
      "task": str(config.task), "params": run_.num_params, "mesh": {k: int(v) for k, v in run_.mesh.shape.items()},
      "global_batch": batch_size, "decode_batch": decode_batch,
      "batch_shapes": {k: list(v.shape) for k, v in run_.task.batch_spec(batch_size).items()},
      "attention_impl": str(model.get("attention_impl", "?")), "dtype": str(model.get("dtype", "float32")),
      "param_dtype": str(config.train.get("param_dtype", "float32")), "stacks": stack_settings(model),
      "estimate_basis": ESTIMATE_BASIS,
      "steps": [dataclasses.asdict(s) | {"ok": s.ok} for s in steps],
      "ok": all(s.ok for s in steps),
  }
