"""Scaling report for a sweep: fits, bootstrap intervals, held-out error, markdown + JSON + plots.

  python -m hat_jax.scaling.report --results runs/sweep/results.jsonl --out runs/sweep/report

Input: a JSONL file, one record per finished run, e.g.

  {"name": "hat-d256", "model": "hat", "params_non_embedding": 1.2e6, "flops": 3.4e15,
   "bytes": 5.0e8, "val_loss": 1.31}

  * "params_non_embedding" (N) and the loss (default key "val_loss") are required;
  * "flops" (C) is optional; without it C = 6 N D is used when the record has a data size;
  * the data size D is "tokens" or "bytes" (`--data-key`; default: "tokens" if every record of a model
    has it, else "bytes"), used for C = 6 N D and the Chinchilla fit L(N, D);
  * "model" groups runs into families (one fit per family; missing -> "all"); other keys are ignored.

Compare families only in a loss unit they share (e.g. bits per byte, not nats per token vs per byte).

Per family it fits L(N) = E + (N0/N)^alpha_N, L(C) = E + (C0/C)^alpha_C and, when D varies
independently of N, L(N, D) = E + A/N^alpha + B/D^beta; a fit the data cannot support (too few runs,
too few distinct sizes) is skipped with the reason in the report. Outputs in --out:
  report.md, report.json, loss_vs_params.png, loss_vs_flops.png
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hat_jax.scaling import fit as fitlib
from hat_jax.scaling import plots

REQUIRED = ("params_non_embedding",)


def load_results(path: str | os.PathLike, loss_key: str = "val_loss") -> list[dict[str, Any]]:
  """Records of a results JSONL file (blank lines skipped); errors name the offending line."""
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e}).") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object per line, got {type(rec).__name__}.")
      missing = [k for k in (*REQUIRED, loss_key) if k not in rec]
      if missing:
        raise ValueError(f"{path}:{lineno}: run {rec.get('name', '?')!r} lacks {missing}; every record "
                         f"needs {list(REQUIRED) + [loss_key]}.")
      records.append(rec)
  if not records:
    raise ValueError(f"{path} holds no run records.")
  return records


@dataclasses.dataclass
class FitReport:
  """One fitted law of one family, or why it was skipped."""

  law: str
  fit: Any = None
  bootstrap: fitlib.BootstrapResult | None = None
  held_out: fitlib.HeldOutResult | None = None
  skipped: str | None = None
  notes: list[str] = dataclasses.field(default_factory=list)

  def to_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {"law": self.law}
    if self.skipped:
      out["skipped"] = self.skipped
      return out
    out["formula"] = self.fit.formula()
    out["params"] = self.fit.params()
    out["n_points"] = self.fit.n_points
    out["objective"] = self.fit.objective
    out["converged"] = self.fit.converged
    if self.bootstrap:
      out["bootstrap"] = {"level": self.bootstrap.level, "n_ok": self.bootstrap.n_ok,
                          "n_failed": self.bootstrap.n_failed,
                          "intervals": {k: list(v) for k, v in self.bootstrap.intervals.items()}}
    if self.held_out:
      out["held_out"] = {"inputs": list(self.held_out.inputs), "observed": self.held_out.observed,
                         "predicted": self.held_out.predicted,
                         "relative_error": self.held_out.relative_error}
    if self.notes:
      out["notes"] = self.notes
    return out


def _fit_with_extras(law: str, fit_fn: Callable[..., Any], data: Sequence[np.ndarray], n_boot: int,
                     seed: int, level: float) -> FitReport:
  try:
    fit = fit_fn(*data)
  except (ValueError, RuntimeError) as e:
    return FitReport(law=law, skipped=str(e))
  rep = FitReport(law=law, fit=fit)
  if not fit.converged:
    rep.notes.append("L-BFGS did not report convergence at the best start; treat with care.")
  if n_boot:
    try:
      rep.bootstrap = fitlib.bootstrap(fit_fn, data, n=n_boot, seed=seed, level=level)
    except (ValueError, RuntimeError) as e:
      rep.notes.append(f"no bootstrap: {e}")
  try:
    rep.held_out = fitlib.held_out_error(fit_fn, data)
  except (ValueError, RuntimeError) as e:
    rep.notes.append(f"no held-out check: {e}")
  return rep


def _data_key(records: list[dict[str, Any]], requested: str) -> str | None:
  if requested != "auto":
    return requested
  for key in ("tokens", "bytes"):
    if all(key in r for r in records):
      return key
  return None


def analyse_family(records: list[dict[str, Any]], *, loss_key: str = "val_loss", data_key: str = "auto",
                   n_boot: int = 100, seed: int = 0, level: float = 0.95,
                   top_k: int | None = fitlib.DEFAULT_TOP_K) -> dict[str, Any]:
  """Fits every law the runs of one family support. Returns {"runs", "data_key", "fits", ...}."""
  N = np.array([float(r["params_non_embedding"]) for r in records])
  L = np.array([float(r[loss_key]) for r in records])
  key = _data_key(records, data_key)
  D = np.array([float(r[key]) for r in records]) if key and all(key in r for r in records) else None
  notes = []
  if all("flops" in r for r in records):
    C = np.array([float(r["flops"]) for r in records])
  elif D is not None:
    C = fitlib.flops_6nd(N, D)
    notes.append(f"flops missing: C = 6 N D with D = {key}.")
  else:
    C = None
  power = functools.partial(fitlib.fit_power_law, top_k=top_k)
  fits = {"L(N)": _fit_with_extras("L(N)", functools.partial(power, variable="N"), (N, L), n_boot,
                                   seed, level)}
  if C is not None:
    fits["L(C)"] = _fit_with_extras("L(C)", functools.partial(power, variable="C"), (C, L), n_boot,
                                    seed, level)
  else:
    fits["L(C)"] = FitReport(law="L(C)", skipped="no 'flops' and no data size to compute 6 N D.")
  if D is not None:
    fits["L(N,D)"] = _fit_with_extras(
        "L(N,D)", functools.partial(fitlib.fit_chinchilla, top_k=top_k), (N, D, L), n_boot, seed,
        level)
  else:
    fits["L(N,D)"] = FitReport(law="L(N,D)", skipped="no data size ('tokens'/'bytes') in the records.")
  return {"runs": records, "N": N, "C": C, "D": D, "L": L, "data_key": key, "fits": fits,
          "notes": notes}


def _fmt(v: float) -> str:
  if v is None or not math.isfinite(v):
    return str(v)
  return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def render_markdown(families: dict[str, dict[str, Any]], *, results_path: str, loss_key: str,
                    level: float, n_boot: int) -> str:
  lines = [
      "# Scaling report", "",
      f"Results: `{results_path}`; loss: `{loss_key}`; N = non-embedding parameters; "
      f"C = `flops` as recorded (else 6 N D). Fits: Huber (delta {fitlib.HUBER_DELTA:g}) on log-loss, "
      f"multi-start L-BFGS. Intervals: {level:.0%} percentile bootstrap over {n_boot} refits. Held-out: "
      "fit without the largest run, relative error (predicted - observed) / observed on it.", "",
      "| family | law | runs | fit | parameters [bootstrap interval] | held-out rel. error |",
      "|---|---|---|---|---|---|",
  ]
  for name, fam in families.items():
    for law, rep in fam["fits"].items():
      if rep.skipped:
        lines.append(f"| {name} | {law} | {len(fam['runs'])} | skipped | {rep.skipped} | |")
        continue
      cells = []
      for k, v in rep.fit.params().items():
        ci = ""
        if rep.bootstrap and k in rep.bootstrap.intervals:
          lo, hi = rep.bootstrap.intervals[k]
          ci = f" [{_fmt(lo)}, {_fmt(hi)}]"
        cells.append(f"{k} = {_fmt(v)}{ci}")
      held = f"{rep.held_out.relative_error:+.2%}" if rep.held_out else "n/a"
      lines.append(f"| {name} | {law} | {rep.fit.n_points} | `{rep.fit.formula()}` | "
                   f"{'; '.join(cells)} | {held} |")
  notes = [f"- {name} {law}: {n}" for name, fam in families.items()
           for law, rep in fam["fits"].items() for n in rep.notes]
  notes += [f"- {name}: {n}" for name, fam in families.items() for n in fam["notes"]]
  if notes:
    lines += ["", "Notes:", *notes]
  lines += ["", "Plots: `loss_vs_params.png`, `loss_vs_flops.png`.", ""]
  return "\n".join(lines)


def write_report(results: str | os.PathLike, out_dir: str | os.PathLike, *, loss_key: str = "val_loss",
                 data_key: str = "auto", n_boot: int = 100, seed: int = 0, level: float = 0.95,
                 top_k: int | None = fitlib.DEFAULT_TOP_K) -> dict[str, Any]:
  """Runs the whole report; returns the JSON document it wrote."""
  records = load_results(results, loss_key)
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in records:
    groups.setdefault(str(r.get("model", "all")), []).append(r)
  families = {name: analyse_family(rs, loss_key=loss_key, data_key=data_key, n_boot=n_boot, seed=seed,
                                   level=level, top_k=top_k)
              for name, rs in sorted(groups.items())}
  os.makedirs(out_dir, exist_ok=True)
  doc = {"results": str(results), "loss_key": loss_key, "level": level, "n_bootstrap": n_boot,
         "seed": seed, "huber_delta": fitlib.HUBER_DELTA,
         "families": {name: {"runs": [r.get("name") for r in fam["runs"]], "data_key": fam["data_key"],
                             "notes": fam["notes"],
                             "fits": {law: rep.to_json() for law, rep in fam["fits"].items()}}
                      for name, fam in families.items()}}
  with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
  with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
    f.write(render_markdown(families, results_path=str(results), loss_key=loss_key, level=level,
                            n_boot=n_boot))
  for law, xkey, xlabel, fname in (("L(N)", "N", "non-embedding parameters N", "loss_vs_params.png"),
                                   ("L(C)", "C", "training compute C (FLOPs)", "loss_vs_flops.png")):
    series = []
    for name, fam in families.items():
      if fam[xkey] is None:
        continue
      rep = fam["fits"][law]
      series.append(plots.Series(label=name, x=fam[xkey], L=fam["L"], fit=rep.fit))
    if series:
      plots.plot_scaling(series, os.path.join(out_dir, fname), xlabel=xlabel, ylabel=loss_key,
                         title=f"{loss_key} vs {xkey}")
  return doc


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hat_jax.scaling.report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--results", required=True, help="results JSONL, one record per run")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--loss-key", default="val_loss")
  parser.add_argument("--data-key", default="auto", help="'tokens', 'bytes' or 'auto'")
  parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits (0 = none)")
  parser.add_argument("--level", type=float, default=0.95, help="bootstrap interval level")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--top-k", type=int, default=fitlib.DEFAULT_TOP_K,
                      help="L-BFGS refinements per fit (0 = every grid start, the exact Hoffmann recipe)")
  args = parser.parse_args(argv)
  try:
    write_report(args.results, args.out, loss_key=args.loss_key, data_key=args.data_key,
                 n_boot=args.bootstrap, seed=args.seed, level=args.level, top_k=args.top_k or None)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(args.out, "report.md"), encoding="utf-8") as f:
    print(f.read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
