"""Scaling-law plots: loss against N (or C) on log axes, data points and fitted curves, saved as PNG.

One figure holds one or more series (e.g. one per model family), each with its runs as points and its
fit L(x) = E + (x0/x)^alpha as a line over the data range, extended by EXTRAPOLATE (dashed) to show
where the law is being extrapolated. A held-out run (see `fit.held_out_error`) is drawn hollow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: works without a display (CI, servers).
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

EXTRAPOLATE = 4.0  # the dashed part of a curve reaches this factor beyond the largest run


@dataclasses.dataclass
class Series:
  """One model family on a plot: runs (x, L) and optionally a fit with `predict(x)` and `formula()`."""

  label: str
  x: Any
  L: Any
  fit: Any = None
  held_out_index: int | None = None  # this run is drawn hollow: it was not used by `fit`


def plot_scaling(series: Sequence[Series], path: str | os.PathLike, *, xlabel: str,
                 ylabel: str = "validation loss", title: str | None = None) -> str:
  """Writes a log-log plot of every series to `path` (PNG) and returns the path.

  The y axis is logarithmic too, so a pure power law is a straight line and an offset E shows as
  the curve flattening towards E.
  """
  if not series:
    raise ValueError("plot_scaling needs at least one Series.")
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, s in enumerate(series):
    color = colors[i % len(colors)]
    x = np.asarray(s.x, dtype=np.float64)
    L = np.asarray(s.L, dtype=np.float64)
    used = np.ones(len(x), dtype=bool)
    if s.held_out_index is not None:
      used[s.held_out_index] = False
      ax.scatter(x[~used], L[~used], facecolors="none", edgecolors=color, s=40, zorder=3,
                 label=f"{s.label} (held out)")
    ax.scatter(x[used], L[used], color=color, s=25, zorder=3, label=f"{s.label} runs")
    if s.fit is not None:
      lo, hi = x.min(), x.max()
      xs = np.geomspace(lo / 1.5, hi, 200)
      xe = np.geomspace(hi, hi * EXTRAPOLATE, 50)
      formula = s.fit.formula() if hasattr(s.fit, "formula") else "fit"
      ax.plot(xs, s.fit.predict(xs), color=color, lw=1.5, label=formula)
      ax.plot(xe, s.fit.predict(xe), color=color, lw=1.5, ls="--")
  ax.set_xscale("log")
  ax.set_yscale("log")
  # Losses usually span less than a decade: plain numbers read better than 4x10^0.
  ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
  ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
  ax.tick_params(axis="y", which="minor", labelsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return str(path)
