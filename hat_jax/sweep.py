r"""Scaling sweeps: run a list of config variants, record (N, D, C, loss) per run, fit the laws.

  python -m hat_jax.sweep --sweep=configs/sweeps/hat_scaling.py --workdir=runs/scaling
  python -m hat_jax.sweep --sweep=configs/sweeps/bytes_scaling.py --workdir=runs/scaling

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
flops, flops_exact (when the task has an analytic formula), bytes, words, steps, val_loss (= eval
bits per byte, so HAT and the byte baseline share a unit), val_loss_nats, val_word_accuracy, wall_s.

FLOPs: `flops` is Kaplan's C = 6 * sum over levels of (non-embedding params of that level x positions
it processed), `hat_jax.train.flops.six_nd_flops`; the L(C) fits use it.
  byte baseline: one level, C = 6 * N * D_bytes;
  HAT: encoder, decoder, pooling, guides and the byte head run per byte position, the backbone per
       word position: C = 6 * (N_byte_level * D_bytes + N_backbone * D_words).
D_bytes = steps * batch * seq_bytes and D_words = steps * batch * seq_words are the positions the
model computed on (padding included: compute is spent on it). Attention-score FLOPs (2 * n_ctx * d
per layer and position, Kaplan's C_forward extra term) are left out as in 6ND; with seq_bytes <= 256
and local windows they add < 20% at these widths. Embedding lookups are not counted
(`hat_jax.scaling.non_embedding_params` drops every param path containing "embed").
`flops_exact` = `hat_jax.train.flops.training_flops(config)["train"] * steps`, the matmul count the
trainer's MFU uses (attention included); records of older runs lack it.

`--override=KEY=VALUE` (repeatable) applies to every run, after the spec's own keys (e.g. mesh
settings of the machine the sweep runs on); the value is parsed as the field's type. An unknown key
is an error (spec keys and --override alike).

Clusters: `--print-commands` prints one independent command per unfinished run (this module with
`--only=<name> --no-report`), for a launcher to run as separate jobs on a shared workdir; afterwards
`--collect` rebuilds results.jsonl and the report without training. With `--launcher=tpu --tpu=NAME
--zone=ZONE` the commands are `python tools/launch_tpu.py ... --sweep=... --only=<name>` instead (more
launcher flags with `--launcher-arg=--project=...`, repeatable), and without --print-commands they
are launched one after another, each waiting for its run: one TPU slice holds one run at a time. A
TPU workdir is gs://; every workdir read and write here goes through `etils.epath`, so
--print-commands, --collect and the finished-run checks work there too (with gcsfs installed).
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import importlib.util
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time
from typing import Any

from etils import epath
from ml_collections.config_flags import config_path

from hat_jax import launch_tpu
from hat_jax.train.metrics import is_remote

FINAL = "final_metrics.json"
RESULTS = "results.jsonl"
# Param paths of the HAT backbone (word level); everything else of HAT runs per byte.
BACKBONE_PATH = "backbone"
PREEMPTED_EXIT_CODE = 143  # as hat_jax.main: 128 + SIGTERM, what schedulers expect


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


def _from_text(key: str, current: Any, text: str) -> Any:
  """A command-line override's text as the type of the field it sets (as hat_jax.main's --config.*)."""
  if isinstance(current, bool):
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
    raise ValueError(f"--override={key}={text}: {key} is a bool, use true or false.")
  if isinstance(current, (int, float)):
    try:
      return type(current)(text)
    except ValueError:
      raise ValueError(f"--override={key}={text}: {key} is a {type(current).__name__}, "
                       f"got {text!r}.") from None
  if isinstance(current, str):
    return text
  try:  # None or a container field: a python literal such as (2, 4) or None, else the plain string
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


class UnknownFieldError(KeyError):
  """An override names no config field. Printed as is: a plain KeyError prints repr(message), which
  escapes the quotes of ml_collections' message (it holds both kinds)."""

  def __str__(self) -> str:
    return str(self.args[0])


def apply_overrides(config, overrides: dict[str, Any], *, from_text: bool = False):
  """Sets dotted keys (not 'name') through ConfigDict.update_from_flattened_dict; an unknown key
  raises UnknownFieldError (a KeyError), and a value keeps the field's type (ConfigDict's type
  safety: an int may set a float field, a str may not set an int one). from_text: the values are
  command-line strings, parsed as the field's type first."""
  # update_from_flattened_dict adds a leaf that does not exist yet; on a locked ConfigDict it raises
  # instead, so a misspelt key is an error (with ml_collections' "did you mean") rather than a new,
  # silently unused field.
  was_locked = config.is_locked
  config.lock()
  try:
    for key, value in overrides.items():
      if key == "name":
        continue
      try:
        if from_text:
          with contextlib.suppress(KeyError):  # unknown key: update_from_flattened_dict says which part
            value = _from_text(key, config_path.get_value(key, config), value)
        config.update_from_flattened_dict({key: value})
      except KeyError as e:  # ml_collections names only the missing part; say which override it was
        raise UnknownFieldError(f"Override {key!r}: config has no field {key!r} ({e.args[0]})") from None
  finally:
    if not was_locked:
      config.unlock()
  return config


def parse_overrides(items: list[str]) -> dict[str, str]:
  """['mesh.fsdp=4', ...] (--override) -> {'mesh.fsdp': '4'}."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key or " " in key:
      raise ValueError(f"--override={item!r}: expected KEY=VALUE with a dotted config key, e.g. mesh.fsdp=4.")
    out[key] = value
  return out


def run_config(base: str, run: dict[str, Any], extra: dict[str, str] | None = None):
  """The config of one run: base, the spec's overrides, then `extra` command-line overrides (text)."""
  return apply_overrides(apply_overrides(load_config(base), run), extra or {}, from_text=True)


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
                       f"{sorted(inner)}); update BACKBONE_PATH in hat_jax/sweep.py.")
    out["params_backbone"] = non_embedding_params(backbone)
    out["params_byte_level"] = out["params_non_embedding"] - out["params_backbone"]
  return out


def make_record(name: str, config, final: dict[str, float], wall_s: float) -> dict[str, Any]:
  from hat_jax.train import flops, registry  # pylint: disable=g-import-not-at-top

  params = count_params(config)
  if "eval/bits_per_byte" not in final:
    raise ValueError(f"Run {name}: the trainer returned no eval/bits_per_byte (got {sorted(final)}); "
                     f"the final step must evaluate (it does when step == train.steps).")
  steps = int(config.train.steps)
  exact = flops.step_flops_or_none(config)  # None: no analytic formula for this task
  return {"name": name, "model": str(config.task), **params, "flops": flops.six_nd_flops(config, params),
          **({} if exact is None else {"flops_exact": exact * steps}),
          **registry.make_task(config).run_positions(), "steps": steps,
          "val_loss": float(final["eval/bits_per_byte"]), "val_loss_nats": float(final.get("eval/loss", "nan")),
          "val_word_accuracy": float(final.get("eval/word_accuracy", "nan")), "wall_s": round(wall_s, 1)}


def _final_path(workdir: str, name: str) -> epath.Path:
  return epath.Path(workdir) / name / FINAL


def _write_atomic(path: epath.Path, text: str) -> None:
  """Writes through a temporary file and a rename: atomic on a local disk, so a killed job never
  leaves a half-written file (on GCS an object appears only once fully uploaded anyway)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def run_one(base: str, run: dict[str, Any], workdir: str, *, extra: dict[str, str] | None = None,
            stop_at_step: int | None = None) -> dict | None:
  """Trains (or resumes) one run and writes its final_metrics.json; returns the record, or None if
  the run stopped early (stop_at_step). A finished run is skipped and its stored record returned.
  `extra`: command-line overrides (text) applied after the run's own."""
  import jax  # pylint: disable=g-import-not-at-top

  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  final_path = _final_path(workdir, run["name"])
  if final_path.exists():
    return json.loads(final_path.read_text())["record"]
  config = run_config(base, run, extra)
  start = time.perf_counter()
  final = trainer.train(config, os.fspath(final_path.parent), stop_at_step=stop_at_step)
  if int(final.get("step", 0)) < int(config.train.steps):
    return None
  record = make_record(run["name"], config, final, time.perf_counter() - start)
  if jax.process_index() == 0:  # every host of a pod slice trains the run; one writes its result
    _write_atomic(final_path, json.dumps({"config_base": base, "overrides": run, "extra_overrides": extra or {},
                                          "metrics": final, "record": record}, indent=2))
  return record


def collect(workdir: str) -> list[dict[str, Any]]:
  """Rewrites <workdir>/results.jsonl from every finished run (sorted by name); returns the records."""
  root = epath.Path(workdir)
  records = []
  for name in sorted(p.name for p in root.iterdir()) if root.is_dir() else []:
    path = _final_path(workdir, name)
    if path.exists():
      records.append(_with_exact_flops(json.loads(path.read_text())))
  _write_atomic(root / RESULTS, _jsonl(records))
  return records


def _with_exact_flops(final: dict[str, Any]) -> dict[str, Any]:
  """The run's record; records written before `flops_exact` existed get it from their stored config
  (analytic, no model is built). Runs whose task has no formula, or whose config no longer loads,
  keep the record as stored."""
  from hat_jax.train import flops  # pylint: disable=g-import-not-at-top

  record = final["record"]
  if "flops_exact" in record or "config_base" not in final:
    return record
  try:
    exact = flops.step_flops_or_none(run_config(final["config_base"], final["overrides"]))
  except (OSError, ValueError, KeyError):
    return record
  return record if exact is None else {**record, "flops_exact": exact * int(record["steps"])}


def _jsonl(records: list[dict[str, Any]]) -> str:
  return "".join(json.dumps(r) + "\n" for r in records)


def report(workdir: str, n_boot: int = 30) -> str:
  """Fits every law into <workdir>/report. When a family has runs at several step counts, L(N) and
  L(C) mix data budgets; so a second report (<workdir>/report_fixed_D) uses only each family's runs
  at its most-used step count (`fixed_d_steps`), the clean L(N) at fixed D. Returns the markdown printed.

  The fitting and plotting code writes local files, so a remote (gs://) workdir is reported into a
  local temporary directory whose files are then copied up."""
  records = collect(workdir)
  if not records:
    raise ValueError(f"No finished runs in {workdir}; nothing to report.")
  if not is_remote(workdir):
    return _report(workdir, records, n_boot)
  with tempfile.TemporaryDirectory() as stage:
    pathlib.Path(stage, RESULTS).write_text(_jsonl(records), encoding="utf-8")
    text = _report(stage, records, n_boot)
    for local in sorted(pathlib.Path(stage).rglob("*")):
      if local.is_file() and local.name != RESULTS:  # collect() already wrote results.jsonl there
        remote = epath.Path(workdir) / local.relative_to(stage).as_posix()
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_bytes(local.read_bytes())
  return text


def _report(workdir: str, records: list[dict[str, Any]], n_boot: int) -> str:
  """report() in a local directory that holds results.jsonl."""
  from hat_jax.scaling import report as report_lib  # pylint: disable=g-import-not-at-top

  out = []
  report_lib.write_report(os.path.join(workdir, RESULTS), os.path.join(workdir, "report"), n_boot=n_boot)
  with open(os.path.join(workdir, "report", "report.md"), encoding="utf-8") as f:
    out.append(f.read())
  budget = fixed_d_steps(records)
  fixed = [r for r in records if r["steps"] == budget[r["model"]]]
  if len(fixed) < len(records):
    path = os.path.join(workdir, "results_fixed_D.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      f.write(_jsonl(fixed))
    report_lib.write_report(path, os.path.join(workdir, "report_fixed_D"), n_boot=n_boot)
    with open(os.path.join(workdir, "report_fixed_D", "report.md"), encoding="utf-8") as f:
      out.append("## Fixed D: each family's runs at its most-used step count ("
                 + ", ".join(f"{m}: {st}" for m, st in sorted(budget.items())) + ")\n\n" + f.read())
  out.append(runs_table(records))
  text = "\n\n".join(out)
  with open(os.path.join(workdir, "sweep.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def fixed_d_steps(records: list[dict[str, Any]]) -> dict[str, int]:
  """Per family, the step count (data budget) with the most runs, ties to the larger: the runs that
  give L(N) and L(C) at fixed D when a sweep also varies D."""
  counts = collections.Counter((r["model"], r["steps"]) for r in records)
  best = {}
  for (model, steps), n in counts.items():
    if model not in best or (n, steps) > (counts[(model, best[model])], best[model]):
      best[model] = steps
  return best


def runs_table(records: list[dict[str, Any]]) -> str:
  lines = ["| run | model | N (non-emb.) | steps | bytes | FLOPs (6ND) | FLOPs (exact) | val bpb | word acc | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    exact = f"{r['flops_exact']:.3g}" if "flops_exact" in r else "n/a"  # older records lack it
    lines.append(f"| {r['name']} | {r['model']} | {r['params_non_embedding']:,} | {r['steps']} | "
                 f"{r['bytes']:.3g} | {r['flops']:.3g} | {exact} | {r['val_loss']:.4f} | "
                 f"{r['val_word_accuracy']:.4f} | {r['wall_s']} |")
  return "\n".join(lines)


def unfinished(workdir: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [run for run in runs if not _final_path(workdir, run["name"]).exists()]


def _job_args(base: str, sweep_path: str, workdir: str, name: str, extra: dict[str, str]) -> list[str]:
  """The flags one cluster job needs besides its program (shared by the local and the TPU form)."""
  return [f"--config={base}", f"--sweep={sweep_path}", f"--workdir={workdir}", f"--only={name}",
          *(f"--override={k}={v}" for k, v in extra.items())]


def commands(base: str, sweep_path: str, workdir: str, runs: list[dict[str, Any]],
             python: str = "python", extra: dict[str, str] | None = None) -> list[str]:
  """One independent shell command per unfinished run (for a cluster launcher)."""
  return [shlex.join([python, "-m", "hat_jax.sweep", *_job_args(base, sweep_path, workdir, run["name"],
                                                                 extra or {}), "--no-report"])
          for run in unfinished(workdir, runs)]


def tpu_launches(base: str, sweep_path: str, workdir: str, runs: list[dict[str, Any]], *, tpu: str, zone: str,
                 launcher_args: list[str], extra: dict[str, str] | None = None) -> list[list[str]]:
  """tools/launch_tpu.py arguments per unfinished run, each checked by launch_tpu's own parser first (a
  bad launcher flag exits 2 with its usage line before anything is printed or launched)."""
  out = []
  for run in unfinished(workdir, runs):
    argv = [f"--tpu={tpu}", f"--zone={zone}", *_job_args(base, sweep_path, workdir, run["name"], extra or {}),
            *launcher_args]
    launch_tpu.plan(argv)
    out.append(argv)
  return out


def _check_launcher_args(args) -> None:
  if args.launcher == "tpu":
    if not (args.tpu and args.zone):
      raise ValueError("--launcher=tpu needs --tpu=NAME and --zone=ZONE (e.g. --tpu=my-v5p-64 --zone=us-east5-a).")
    if args.collect:
      raise ValueError("--collect reads the workdir here; drop --launcher=tpu (nothing is launched).")
  elif args.tpu or args.zone or args.launcher_arg:
    raise ValueError("--tpu, --zone and --launcher-arg only apply with --launcher=tpu.")


def _launch_on_tpu(launches: list[list[str]]) -> int:
  """Runs the launches one after another (one TPU slice holds one run at a time); the first that
  fails stops the sweep. Returns its exit status, or 0."""
  for i, argv in enumerate(launches):
    command = shlex.join(["python", launch_tpu.CLI, *argv])
    print(f"[sweep] launch {i + 1}/{len(launches)}: {command}", flush=True)
    rc = launch_tpu.main(argv)
    if rc != 0:
      print(f"error: launch {i + 1}/{len(launches)} exited with {rc}: {command}\nRerun the same sweep command to "
            f"go on: finished runs are skipped and a partial run resumes from its checkpoints.", file=sys.stderr)
      return rc
  return 0


def _train_here(base: str, runs: list[dict[str, Any]], workdir: str, extra: dict[str, str],
                n_boot: int | None) -> int:
  """Trains the runs in this process, then reports unless n_boot is None. Returns the exit status."""
  from hat_jax import distributed  # pylint: disable=g-import-not-at-top

  # On a pod slice every worker runs this script: they train each run together, as hat_jax.main does.
  distributed.maybe_initialize()
  import jax  # pylint: disable=g-import-not-at-top

  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  lead = jax.process_index() == 0  # the one process that writes the shared files
  if lead:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  try:
    for i, run in enumerate(runs):
      print(f"[sweep] run {i + 1}/{len(runs)}: {run['name']}", flush=True)
      record = run_one(base, run, workdir, extra=extra)
      print(f"[sweep] {run['name']}: {json.dumps(record)}", flush=True)
      if lead:
        collect(workdir)
  except trainer.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    return PREEMPTED_EXIT_CODE
  if lead and n_boot is not None:
    print(report(workdir, n_boot))
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hat_jax.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", required=True, help="sweep spec file with get_sweep()")
  parser.add_argument("--config", default=None, help="base config 'path.py:arg' (default: the spec's BASE_CONFIG)")
  parser.add_argument("--workdir", required=True, help="local directory, or gs://bucket/path (needs gcsfs here)")
  parser.add_argument("--only", default=None, help="comma-separated run names to run (default: all)")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for every run, after the spec's, repeatable: mesh.fsdp=4")
  parser.add_argument("--no-report", action="store_true", help="do not fit/report after the runs")
  parser.add_argument("--collect", action="store_true", help="only rebuild results.jsonl and the report")
  parser.add_argument("--print-commands", action="store_true",
                      help="print one independent command per unfinished run and exit (dry run)")
  parser.add_argument("--launcher", choices=["local", "tpu"], default="local",
                      help="local: train here; tpu: launch each unfinished run with tools/launch_tpu.py, in turn")
  parser.add_argument("--tpu", default=None, help="with --launcher=tpu: TPU VM (pod slice) name")
  parser.add_argument("--zone", default=None, help="with --launcher=tpu: its zone, e.g. us-east5-a")
  parser.add_argument("--launcher-arg", action="append", default=[], metavar="FLAG",
                      help="with --launcher=tpu: a further tools/launch_tpu.py flag, repeatable: "
                           "--launcher-arg=--num-slices=2")
  parser.add_argument("--bootstrap", type=int, default=30, help="bootstrap refits per law")
  args = parser.parse_args(argv)
  try:
    _check_launcher_args(args)
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
    extra = parse_overrides(args.override)
    if not args.collect:
      for run in runs:  # every key and value is checked before a job is printed, launched or trained
        run_config(base, run, extra)
    if args.launcher == "tpu":
      launches = tpu_launches(base, args.sweep, args.workdir, runs, tpu=args.tpu, zone=args.zone,
                              launcher_args=args.launcher_arg, extra=extra)
      if args.print_commands:
        print("\n".join(shlex.join(["python", launch_tpu.CLI, *a]) for a in launches))
        return 0
      rc = _launch_on_tpu(launches)
      if rc != 0:
        return rc
    elif args.print_commands:
      print("\n".join(commands(base, args.sweep, args.workdir, runs, extra=extra)))
      return 0
    elif not args.collect:
      return _train_here(base, runs, args.workdir, extra, None if args.no_report else args.bootstrap)
    if not args.no_report:
      print(report(args.workdir, args.bootstrap))
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ImportError as e:
    if not is_remote(args.workdir):
      raise
    # etils.epath on a gs:// workdir without its GCS backend
    print(f"error: {e} (needed to read and write --workdir={args.workdir}: pip install gcsfs)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
