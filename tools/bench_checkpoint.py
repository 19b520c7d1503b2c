"""What checkpoint integrity costs: fingerprinting vs the save and restore it guards, measured in one run.

  python tools/bench_checkpoint.py                    # configs/hat.py:small (params + Adam moments)
  python tools/bench_checkpoint.py --config=configs/hat.py:tiny --repeats=5
  python tools/bench_checkpoint.py --config=configs/hat_paper.py:7b --tpu=v5p-256   # compiled, not run

Builds the trainer's run for the config (its real train state: params and optimizer state, on this
host's devices), then times, each `--repeats` times (median reported):
  * fingerprint: `integrity.fingerprint_tree(state)` (the on-device reduction plus the few bytes fetched);
  * save: `Checkpointer.save` + `wait` (synchronous end to end; it includes one fingerprint);
  * restore: `Checkpointer.restore` (it includes one fingerprint of what was read, and the comparison).
The ratios fingerprint/save and fingerprint/restore are the overhead integrity adds.

`--tpu=<topology>` instead compiles the fingerprint of the config's sharded train state for that TPU
topology (no TPU needed, see docs/pods.md) and prints its HBM traffic and roofline time per chip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax

from hat_jax import sweep
from hat_jax.train import checkpoint as ckpt_lib
from hat_jax.train import integrity, trainer


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/hat.py:small")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tpu", default=None, help="compile for this TPU topology (e.g. v5p-256) instead of running")
  args = parser.parse_args()

  config = sweep.load_config(args.config)
  if args.tpu:
    _compiled_on_tpu(config, args)
    return
  run = trainer.build(config)
  state = run.init_fn(run.rng(0))
  jax.block_until_ready(state)
  leaves = jax.tree_util.tree_leaves(state)
  nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
  print(f"{args.config}: {run.num_params:,} params; train state {len(leaves)} arrays, {nbytes / 2**20:.1f} MiB; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  compile_s = _timed(lambda: integrity.fingerprint_tree(state))
  times: dict[str, list[float]] = {"fingerprint": [], "save": [], "restore": []}
  with tempfile.TemporaryDirectory() as directory:
    with ckpt_lib.Checkpointer(os.path.join(directory, "checkpoints"), keep=1, async_save=False) as ckpt:
      for i in range(args.repeats):
        times["fingerprint"].append(_timed(lambda: integrity.fingerprint_tree(state)))
        times["save"].append(_timed(lambda: (ckpt.save(i + 1, state, {"index": i}), ckpt.wait())))
        times["restore"].append(_timed(lambda: jax.block_until_ready(ckpt.restore(run.abstract_target())[1])))
  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"fingerprint compile (once per run): {compile_s * 1e3:.0f} ms")
  for name, value in median.items():
    print(f"{name:>12}: {value * 1e3:8.1f} ms (median of {args.repeats})")
  print(f"fingerprint / save    = {median['fingerprint'] / median['save']:.3f}")
  print(f"fingerprint / restore = {median['fingerprint'] / median['restore']:.3f}")
  print(f"fingerprint throughput: {nbytes / median['fingerprint'] / 2**30:.2f} GiB/s")


def _compiled_on_tpu(config, args) -> None:
  from hat_jax import aot, topology  # pylint: disable=g-import-not-at-top
  spec = topology.parse_topology(args.tpu)
  run = trainer.build(config, devices=topology.devices(spec))
  hw = spec.hardware
  leaves = jax.tree_util.tree_leaves(run.abstract_state)
  nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
  print(f"{args.config} on {spec.name} ({spec.num_chips} chips, mesh {dict(run.mesh.shape)}): {run.num_params:,} "
        f"params; train state {len(leaves)} arrays, {nbytes / 2**30:.2f} GiB in all")
  report = aot.compile_fingerprint(run, aot.Hardware(hw.hbm_bytes, hw.peak_flops, hw.hbm_bandwidth), log=print)
  if not report.ok:
    raise SystemExit(f"did not compile: {report.error}")
  print(f"per chip: {report.xla_bytes_accessed / 2**20:.1f} MiB read, roofline {report.estimated_seconds * 1e3:.2f} ms "
        f"at {hw.hbm_bandwidth / 1e9:.0f} GB/s HBM")


if __name__ == "__main__":
  main()
