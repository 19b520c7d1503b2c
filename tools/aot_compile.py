r"""Compile a config's train step (and generation steps) for a TPU topology, on a CPU host: does it compile
with the real Mosaic kernels, does it fit the chip's HBM, and what does XLA say it costs per chip.

  python tools/aot_compile.py --config=configs/hat_paper.py:7b --topology=v5p-256
  python tools/aot_compile.py --config=configs/hat.py:small --topology=v5e:4x4 --config.mesh.data=4 \
      --config.mesh.tensor=4 --config.mesh.indivisible=replicate --json=out.json

--topology takes Cloud TPU accelerator types (v5p-128, v5e-256, v5litepod-16, v4-32, v6e-64) or
topologies (v5e:16x16, v5p:4x4x8); --num_slices for multi-slice (set --config.mesh.dcn_* to use them).
Needs libtpu (`pip install 'jax[tpu]==<jax version>'`, part of the test extra), not a TPU.

Prints, per compiled program and per chip: arguments / outputs / temporaries against HBM, XLA's FLOPs
and bytes, a roofline step-time ESTIMATE and the implied MFU (labelled estimates: collectives, overlap
and kernel efficiency are not modelled), and the compile time. Writes the same as JSON (--json). Exit
status: 0 when every program compiles and fits, 1 when one does not (the report says which and why),
2 on a usage error (bad config, unknown topology, no libtpu).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; only the topology's devices are TPUs

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/hat_paper.py:7b.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU accelerator type (v5p-128) or topology (v5e:4x4).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices (multi-slice over DCN).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch in rows (default: config.train.batch_size).")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", None, "Rows per generation step (default: one per batch shard).")
_DECODE = flags.DEFINE_boolean("decode", True, "Also compile the cached generation steps.")
_JSON = flags.DEFINE_string("json", None, "Write the report here as JSON.")
flags.mark_flags_as_required(["config", "topology"])

GIB = 1 << 30


def _gib(x):
  return "-" if x is None else f"{x / GIB:.2f}"


def summary(report: dict) -> str:
  lines = [f"{'program':<18} {'ok':<4} {'compile s':>9} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} "
           f"{'peak GiB':>9} {'HBM GiB':>8} {'XLA TFLOP':>10} {'XLA GB':>8} {'est. ms':>9} {'est. MFU':>9}"]
  for s in report["steps"]:
    m = s["memory"]
    mfu = "-" if s["implied_mfu"] is None else f"{100 * s['implied_mfu']:.1f}%"
    lines.append(
        f"{s['name']:<18} {('yes' if s['ok'] else 'NO'):<4} {s['compile_seconds']:>9.1f} {_gib(m.get('arguments')):>9} "
        f"{_gib(m.get('outputs')):>8} {_gib(m.get('temporaries')):>9} {_gib(s['peak_bytes']):>9} "
        f"{_gib(s['hbm_bytes']):>8} {(s['xla_flops'] or 0) / 1e12:>10.2f} {(s['xla_bytes_accessed'] or 0) / 1e9:>8.1f} "
        f"{(s['estimated_seconds'] or 0) * 1e3:>9.1f} {mfu:>9}")
    if s["fits"] is False:
      lines.append(f"    does not fit: needs {_gib(s['peak_bytes'])} GiB per chip, the chip has {_gib(s['hbm_bytes'])}"
                   + (" (XLA's own check)" if not s["compiled"] else ""))
    elif s["error"]:
      lines.append(f"    error: {s['error'].splitlines()[0][:300]}")
  lines.append(f"estimates: {report['estimate_basis']}")
  return "\n".join(lines)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from hat_jax import aot  # pylint: disable=g-import-not-at-top

  command = "python tools/aot_compile.py " + " ".join(sys.argv[1:])
  try:
    report = aot.run(_CONFIG.value, _TOPOLOGY.value, num_slices=_NUM_SLICES.value, batch_size=_BATCH.value,
                     decode_batch=_DECODE_BATCH.value, decode=_DECODE.value)
  except ValueError as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    return 2
  report["command"] = command
  report["config"] = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")), None)
  print(summary(report), flush=True)
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump(report, f, indent=1)
    print(f"[aot] wrote {_JSON.value}")
  if not report["ok"]:
    bad = [f"{s['name']} does not {'fit' if s['fits'] is False else 'compile'}" for s in report["steps"] if not s["ok"]]
    print(f"ERROR: on {report['topology']}: {'; '.join(bad)} (see above).", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
