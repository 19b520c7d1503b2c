"""Metric sinks: stdout (tqdm progress bar + summary lines), TensorBoard events, `metrics.jsonl`.

Only process 0 writes; other processes get a writer whose methods do nothing, so call sites need no
`if process_index == 0`. `metrics.jsonl` has one JSON object per write: {"step", "split", ...values},
so tests and scaling scripts read numbers from files, not from logs.

Workdirs may be remote (`gs://...` on TPU pods; through `etils.epath`, which needs `gcsfs` there).
Cloud objects cannot be appended to, so for a remote workdir `metrics.jsonl` is rewritten whole on
each write (it holds one line per logging step: kilobytes), starting from what a resumed run had
written; TensorBoard events go through tensorboardX's own gs:// writer.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import numpy as np
from etils import epath


def is_remote(path: str) -> bool:
  """True for URL-style paths (gs://, s3://, ...) that os-level file calls would silently treat as local."""
  return "://" in str(path)


def _fmt(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
    return f"{value:.3e}"
  return f"{value:.4f}"


class MetricWriter:
  """Writes scalar metrics to stdout, TensorBoard (tensorboardX) and `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str, *, enabled: bool = True, total_steps: int = 0, initial_step: int = 0,
               progress: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None  # local workdir: an open file appended to
    self._remote_lines: list[str] | None = None  # remote workdir: every line, the file is rewritten
    self._bar = None
    if not enabled:
      return
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(workdir):
      self._remote_lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
    else:
      self._jsonl = open(self._path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(str(workdir), "tensorboard"))
    except ImportError:  # TensorBoard is optional; jsonl + stdout still work.
      self._tb = None
    if progress and total_steps:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0, disable=not sys.stderr.isatty())

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in values.items()}
    record = {"step": int(step), "split": split, "time": time.time(), **values}
    line = json.dumps(record) + "\n"
    if self._remote_lines is not None:
      self._remote_lines.append(line)
      self._path.write_text("".join(self._remote_lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()
    line = f"[{split}] step {step}: " + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(values.items()))
    self.print(line)

  def print(self, line: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def advance(self, steps: int = 1, postfix: Mapping[str, float] | None = None) -> None:
    if self._bar is None:
      return
    self._bar.update(steps)
    if postfix:
      self._bar.set_postfix({k: _fmt(float(v)) for k, v in postfix.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
    self._bar = self._tb = self._jsonl = None


def read_jsonl(workdir: str, split: str | None = None) -> list[dict]:
  """Records from `<workdir>/metrics.jsonl` (optionally one split), for tests and analysis scripts."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if split is None or r["split"] == split]


class MeanAccumulator:
  """Host-side running means (averaged metrics) and sums (`sum_names`) of scalar dicts."""

  def __init__(self, sum_names=()):
    self.sum_names = set(sum_names)
    self.reset()

  def reset(self) -> None:
    self.totals: dict[str, float] = {}
    self.count = 0

  def add(self, values: Mapping[str, float]) -> None:
    for k, v in values.items():
      self.totals[k] = self.totals.get(k, 0.0) + float(v)
    self.count += 1

  def result(self) -> dict[str, float]:
    return {k: (v if k in self.sum_names else v / max(self.count, 1)) for k, v in self.totals.items()}


# Dense bf16 peak FLOP/s per chip (vendor datasheets, no sparsity), matched against
# `jax.devices()[0].device_kind`. Used only to turn counted FLOP/s into a utilisation fraction;
# unknown devices (CPU, other GPUs) report FLOP/s without a fraction.
# GPUs; TPU chips are in hat_jax.topology.HARDWARE (one table with their HBM and bandwidth).
PEAK_BF16_FLOPS = (
    ("H200", 989e12, "NVIDIA H200 SXM datasheet, dense BF16"),
    ("H100", 989e12, "NVIDIA H100 SXM datasheet, dense BF16 (PCIe parts are lower: 756e12)"),
    ("A100", 312e12, "NVIDIA A100 datasheet, dense BF16"),
)


def device_peak_flops(device_kind: str) -> tuple[float, str] | None:
  """(peak bf16 FLOP/s per device, source) for a known accelerator, else None. TPUs match their
  device_kind exactly ("TPU v5 lite", "TPU v5", ...; `hat_jax.topology`), GPUs by substring."""
  from hat_jax import topology  # pylint: disable=g-import-not-at-top

  tpu = topology.hardware_for_device_kind(device_kind)
  if tpu is not None:
    return tpu.peak_flops, tpu.source
  for key, flops, source in PEAK_BF16_FLOPS:
    if key.lower() in device_kind.lower():
      return flops, source
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs per device per call that XLA counts for a compiled program (None if unavailable).

  This counts what the hardware executes (rematerialisation included; custom kernels such as Pallas
  calls are opaque to XLA and count as zero), so FLOP/s over peak is hardware FLOPs utilisation, not
  the analytic model-FLOPs MFU of a paper table.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def memory_summary(compiled) -> str:
  """Per-device memory of a compiled program, for a "will it fit" line before step 0."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return "memory analysis unavailable"
  if stats is None:
    return "memory analysis unavailable"
  mib = 1 << 20
  return (f"per-device memory: arguments {stats.argument_size_in_bytes / mib:.1f} MiB, outputs "
          f"{stats.output_size_in_bytes / mib:.1f} MiB (aliased {stats.alias_size_in_bytes / mib:.1f}), "
          f"temporaries {stats.temp_size_in_bytes / mib:.1f} MiB")
