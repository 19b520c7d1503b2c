r"""Scaling sweeps: run a list of config variants, record (N, D, C, loss) per run, fit the laws.

  python -m experiments.sweep --sweep=configs/sweeps/hat_scaling.py --workdir=runs/scaling
  python -m experiments.sweep --sweep=configs/sweeps/bytes_scaling.py --workdir=runs/scaling

A sweep spec is a python file with `get_sweep() -> list[dict]`. Each dict is one run: "name" (its
directory under --workdir) plus `--config` overrides as dotted keys, e.g.
{"name": "hat-d32", "model.encoder.d_model": 32, "train.steps": 150}. The spec may define BASE_CONFIG
("configs/hat.py:size=tiny,corpus=english"), the default for --config.

Runs go one after another in `<workdir>/<name>/` through `hat_jax.train.trainer.train`, which
resumes a partial run from its checkpoints. A run whose `final_metrics.json` exists is skipped. After
each run `<workdir>/results.jsonl` is rewritten from every finished run's record (so the file never
holds duplicates, and separately launched jobs can fill the same workdir), then
`hat_jax.scaling.report` fits L(N), L(C) and L(N, D) into `<workdir>/report/`.

Record per run (one JSON line): name, model (config.task), params_non_embedding, params_total,
flops, bytes, words, steps, val_loss (= eval bits per byte, so HAT and the byte baseline share a
unit), val_loss_nats, val_word_accuracy, wall_s.

FLOPs: C = 6 * sum over levels of (non-embedding params of that level x positions it processed).
  byte baseline: one level, C = 6 * N * D_bytes;
  HAT: encoder, decoder, pooling, guides and the byte head run per byte position, the backbone per
       word position: C = 6 * (N_byte_level * D_bytes + N_backbone * D_words).
D_bytes = steps * batch * seq_bytes and D_words = steps * batch * seq_words are the positions the
model computed on (padding included: compute is spent on it). Attention-score FLOPs (2 * n_ctx * d
per layer and position, Kaplan's C_forward extra term) are left out as in 6ND; with seq_bytes <= 256
and local windows they add < 20% at these widths. Embedding lookups are not counted
(`hat_jax.scaling.non_embedding_params` drops every param path containing "embed").

Clusters: `--print-commands` prints one independent command per unfinished run (this script with
`--only=<name> --no-report`), for a launcher to run as separate jobs on a shared workdir; afterwards
`--collect` rebuilds results.jsonl and the report without training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from typing import Any

FINAL = "final_metrics.json"
RESULTS = "results.jsonl"
# Param paths of the HAT backbone (word level); everything else of HAT runs per byte.
BACKBONE_PATH = "backbone"


def load_sweep(path: str) -> tuple[list[dict[str, Any]], str | None]:
  """The runs of a sweep spec file and its BASE_CONFIG (or None). Validates names and keys."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Sweep spec {path!r} not found (expected e.g. configs/sweeps/hat_scaling.py).")
  spec = importlib.util.spec_from_file_location(f"_sweep_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"Sweep spec {path} defines no get_sweep() -> list[dict].")
  runs = list(module.get_sweep())
  names = set()
  for i, run in enumerate(runs):
    if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not run["name"]:
      raise ValueError(f"{path}: run {i} must be a dict with a non-empty 'name', got {run!r}.")
    if "/" in run["name"] or run["name"] in (".", ".."):
      raise ValueError(f"{path}: run name {run['name']!r} must be a plain directory name.")
    if run["name"] in names:
      raise ValueError(f"{path}: duplicate run name {run['name']!r}.")
    names.add(run["name"])
  if not runs:
    raise ValueError(f"Sweep spec {path} returned no runs.")
  return runs, getattr(module, "BASE_CONFIG", None)


def load_config(config_spec: str):
  """'configs/hat.py:size=tiny,corpus=toy' -> ConfigDict (same syntax as hat_jax.main --config)."""
  path, _, arg = config_spec.partition(":")
  spec = importlib.util.spec_from_file_location(f"_cfg_{os.path.basename(path)[:-3]}", path)
  if spec is None:
    raise FileNotFoundError(f"Config file {path!r} not found.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config, overrides: dict[str, Any]):
  """Sets dotted keys (not 'name'); unknown keys raise, values keep the field's type (ConfigDict)."""
  for key, value in overrides.items():
    if key == "name":
      continue
    *parents, leaf = key.split(".")
    node = config
    for i, p in enumerate(parents):
      if p not in node:
        raise KeyError(f"Override {key!r}: config has no field {'.'.join(parents[:i + 1])!r}.")
      node = node[p]
    if leaf not in node:
      raise KeyError(f"Override {key!r}: config has no field {key!r} (known here: {sorted(node.keys())}).")
    node[leaf] = value
  return config


def run_config(base: str, run: dict[str, Any]):
  return apply_overrides(load_config(base), run)


def training_positions(config) -> dict[str, float]:
  """Positions computed on during training: bytes (and words for HAT)."""
  t, d = config.train, config.data
  per_step = int(t.steps) * int(t.batch_size)
  out = {"bytes": float(per_step * int(d.seq_bytes))}
  if config.task == "hat":
    out["words"] = float(per_step * int(d.seq_words))
  return out


def count_params(config) -> dict[str, int]:
  """Non-embedding params (total and, for HAT, per level) from the abstract initialised params."""
  import jax  # pylint: disable=g-import-not-at-top

  from hat_jax.scaling import non_embedding_params  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  params = trainer.build(config).abstract_state["params"]
  total = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
  out = {"params_total": total, "params_non_embedding": non_embedding_params(params)}
  if config.task == "hat":
    inner = params.get("params", params)
    backbone = {k: v for k, v in inner.items() if BACKBONE_PATH in k}
    if not backbone:
      raise ValueError(f"No HAT backbone params found (no top-level key containing {BACKBONE_PATH!r} in "
                       f"{sorted(inner)}); update BACKBONE_PATH in experiments/sweep.py.")
    out["params_backbone"] = non_embedding_params(backbone)
    out["params_byte_level"] = out["params_non_embedding"] - out["params_backbone"]
  return out


def training_flops(config, params: dict[str, int]) -> float:
  pos = training_positions(config)
  if config.task == "hat":
    return 6.0 * (params["params_byte_level"] * pos["bytes"] + params["params_backbone"] * pos["words"])
  return 6.0 * params["params_non_embedding"] * pos["bytes"]


def make_record(name: str, config, final: dict[str, float], wall_s: float) -> dict[str, Any]:
  params = count_params(config)
  if "eval/bits_per_byte" not in final:
    raise ValueError(f"Run {name}: the trainer returned no eval/bits_per_byte (got {sorted(final)}); "
                     f"the final step must evaluate (it does when step == train.steps).")
  return {"name": name, "model": str(config.task), **params, "flops": training_flops(config, params),
          **training_positions(config), "steps": int(config.train.steps),
          "val_loss": float(final["eval/bits_per_byte"]), "val_loss_nats": float(final.get("eval/loss", "nan")),
          "val_word_accuracy": float(final.get("eval/word_accuracy", "nan")), "wall_s": round(wall_s, 1)}


def run_one(base: str, run: dict[str, Any], workdir: str, *, stop_at_step: int | None = None) -> dict | None:
  """Trains (or resumes) one run and writes its final_metrics.json; returns the record, or None if
  the run stopped early (stop_at_step). A finished run is skipped and its stored record returned."""
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  run_dir = os.path.join(workdir, run["name"])
  final_path = os.path.join(run_dir, FINAL)
  if os.path.exists(final_path):
    with open(final_path, encoding="utf-8") as f:
      return json.load(f)["record"]
  config = run_config(base, run)
  start = time.perf_counter()
  final = trainer.train(config, run_dir, stop_at_step=stop_at_step)
  if int(final.get("step", 0)) < int(config.train.steps):
    return None
  record = make_record(run["name"], config, final, time.perf_counter() - start)
  tmp = final_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"config_base": base, "overrides": run, "metrics": final, "record": record}, f, indent=2)
  os.replace(tmp, final_path)  # atomic: a killed job never leaves a half-written "finished" marker
  return record


def collect(workdir: str) -> list[dict[str, Any]]:
  """Rewrites <workdir>/results.jsonl from every finished run (sorted by name); returns the records."""
  records = []
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    path = os.path.join(workdir, name, FINAL)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        records.append(json.load(f)["record"])
  tmp = os.path.join(workdir, RESULTS + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, os.path.join(workdir, RESULTS))
  return records


def report(workdir: str, n_boot: int = 30) -> str:
  """Fits every law into <workdir>/report. When a family has runs at several step counts, L(N) and
  L(C) mix data budgets; so a second report (<workdir>/report_max_steps) uses only each family's
  runs at its largest step count, the clean L(N) at fixed D. Returns the markdown printed."""
  from hat_jax.scaling import report as report_lib  # pylint: disable=g-import-not-at-top

  records = collect(workdir)
  if not records:
    raise ValueError(f"No finished runs in {workdir}; nothing to report.")
  return _report(workdir, records, n_boot)


def _report(workdir: str, records: list[dict[str, Any]], n_boot: int) -> str:
  from hat_jax.scaling import report as report_lib  # pylint: disable=g-import-not-at-top

  out = []
  report_lib.write_report(os.path.join(workdir, RESULTS), os.path.join(workdir, "report"), n_boot=n_boot)
  with open(os.path.join(workdir, "report", "report.md"), encoding="utf-8") as f:
    out.append(f.read())
  max_steps = {}
  for r in records:
    max_steps[r["model"]] = max(max_steps.get(r["model"], 0), r["steps"])
  fixed = [r for r in records if r["steps"] == max_steps[r["model"]]]
  if len(fixed) < len(records):
    path = os.path.join(workdir, "results_max_steps.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for r in fixed:
        f.write(json.dumps(r) + "\n")
    report_lib.write_report(path, os.path.join(workdir, "report_max_steps"), n_boot=n_boot)
    with open(os.path.join(workdir, "report_max_steps", "report.md"), encoding="utf-8") as f:
      out.append("## Runs at each family's largest step count only\n\n" + f.read())
  out.append(runs_table(records))
  text = "\n\n".join(out)
  with open(os.path.join(workdir, "sweep.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def runs_table(records: list[dict[str, Any]]) -> str:
  lines = ["| run | model | N (non-emb.) | steps | bytes | FLOPs | val bpb | word acc | wall s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    lines.append(f"| {r['name']} | {r['model']} | {r['params_non_embedding']:,} | {r['steps']} | "
                 f"{r['bytes']:.3g} | {r['flops']:.3g} | {r['val_loss']:.4f} | "
                 f"{r['val_word_accuracy']:.4f} | {r['wall_s']} |")
  return "\n".join(lines)


def commands(base: str, sweep_path: str, workdir: str, runs: list[dict[str, Any]],
             python: str = "python") -> list[str]:
  """One independent shell command per unfinished run (for a cluster launcher)."""
  out = []
  for run in runs:
    if os.path.exists(os.path.join(workdir, run["name"], FINAL)):
      continue
    out.append(" ".join([python, "-m", "experiments.sweep", f"--config={shlex.quote(base)}",
                         f"--sweep={shlex.quote(sweep_path)}", f"--workdir={shlex.quote(workdir)}",
                         f"--only={shlex.quote(run['name'])}", "--no-report"]))
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", required=True, help="sweep spec file with get_sweep()")
  parser.add_argument("--config", default=None, help="base config 'path.py:arg' (default: the spec's BASE_CONFIG)")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--only", default=None, help="comma-separated run names to run (default: all)")
  parser.add_argument("--no-report", action="store_true", help="do not fit/report after the runs")
  parser.add_argument("--collect", action="store_true", help="only rebuild results.jsonl and the report")
  parser.add_argument("--print-commands", action="store_true",
                      help="print one independent command per unfinished run and exit (dry run)")
  parser.add_argument("--bootstrap", type=int, default=30, help="bootstrap refits per law")
  args = parser.parse_args(argv)
  try:
    runs, spec_base = load_sweep(args.sweep)
    base = args.config or spec_base
    if not base:
      raise ValueError(f"No --config given and {args.sweep} defines no BASE_CONFIG.")
    if args.only:
      wanted = args.only.split(",")
      unknown = sorted(set(wanted) - {r["name"] for r in runs})
      if unknown:
        raise ValueError(f"--only names {unknown} are not in {args.sweep} (runs: {[r['name'] for r in runs]}).")
      runs = [r for r in runs if r["name"] in wanted]
    if args.print_commands:
      print("\n".join(commands(base, args.sweep, args.workdir, runs)))
      return 0
    if not args.collect:
      os.makedirs(args.workdir, exist_ok=True)
      for i, run in enumerate(runs):
        print(f"[sweep] run {i + 1}/{len(runs)}: {run['name']}", flush=True)
        record = run_one(base, run, args.workdir)
        print(f"[sweep] {run['name']}: {json.dumps(record)}", flush=True)
        collect(args.workdir)
    if not args.no_report:
      print(report(args.workdir, args.bootstrap))
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
