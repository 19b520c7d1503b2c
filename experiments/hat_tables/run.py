r"""HAT paper tables 2-4 in miniature: compute-matched comparison, robustness, English -> German.

  python -m experiments.hat_tables.run --table robustness --workdir runs/hat_tables
  python -m experiments.hat_tables.run --table compute_matched --workdir runs/hat_tables
  python -m experiments.hat_tables.run --table adaptation --workdir runs/hat_tables

The models are runs of the scaling sweeps (configs/sweeps/{hat,bytes}_scaling.py), trained into
--scaling-workdir (default runs/scaling) through `hat_jax.sweep.run_one`: a run the sweep already
finished is reused, a missing one is trained there first. By default the HAT and byte baseline are a
pair with about equal training FLOPs per step (see README), so "equal steps" is "equal FLOPs".

Each table prints markdown and writes `<table>.csv` / `<table>.json` to --workdir.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from typing import Any

from hat_jax import sweep

HAT_SWEEP, BYTES_SWEEP = "configs/sweeps/hat_scaling.py", "configs/sweeps/bytes_scaling.py"
DEFAULT_HAT_RUN, DEFAULT_BYTES_RUN = "hat-w128-s150", "bytes-w96-s150"
EVAL_BATCHES = 16  # validation batches per evaluation (16 x 8 rows x 128 bytes = 16 KiB)


# --------------------------------------------------------------------------------------------------
# Models from the sweep
# --------------------------------------------------------------------------------------------------


def sweep_run(sweep_path: str, name: str) -> tuple[str, dict[str, Any]]:
  runs, base = sweep.load_sweep(sweep_path)
  by_name = {r["name"]: r for r in runs}
  if name not in by_name:
    raise ValueError(f"Run {name!r} is not in {sweep_path}; runs: {sorted(by_name)}.")
  return base, by_name[name]


def ensure_trained(sweep_path: str, name: str, scaling_workdir: str) -> tuple[Any, str, dict]:
  """(config, run dir, sweep record) of a sweep run, training it first if it is not finished."""
  base, run = sweep_run(sweep_path, name)
  record = sweep.run_one(base, run, scaling_workdir)
  return sweep.run_config(base, run), os.path.join(scaling_workdir, name), record


def with_data(config, corpus: str, eval_batches: int = EVAL_BATCHES):
  config = config.copy_and_resolve_references()
  config.data.corpus = corpus
  config.data.eval_batches = eval_batches
  return config


def evaluate_batches(task, params, batches) -> dict[str, float]:
  """Mean of task.loss metrics over `batches` (equal weight per batch, like the trainer's eval)."""
  import jax  # pylint: disable=g-import-not-at-top

  rng = jax.random.key(0)
  step = jax.jit(lambda p, b: task.loss(p, b, rng)[1])
  totals: dict[str, float] = {}
  for b in batches:
    for k, v in jax.device_get(step(params, b)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / len(batches) for k, v in totals.items()}


def eval_metrics(config, workdir: str) -> dict[str, float]:
  """Latest checkpoint of `workdir` on config's eval batches. Unlike trainer.evaluate this writes
  nothing into the workdir (its metrics.jsonl holds the German eval curve we read back)."""
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  run, params, _ = trainer.restore_params(config, workdir)
  return evaluate_batches(run.task, params, list(run.task.eval_batches()))


def batches_from_docs(task, docs) -> list:
  from hat_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  d = task.config.data
  rows = pipeline.PackedRows(pipeline.encode_documents(docs, task.splitter), int(d.seq_bytes), int(d.seq_words))
  return pipeline.eval_batches(rows, int(d.eval_batch_size), int(d.eval_batches))


# --------------------------------------------------------------------------------------------------
# Table 3: robustness
# --------------------------------------------------------------------------------------------------


def robustness(args) -> list[dict[str, Any]]:
  from hat_jax.data import perturb  # pylint: disable=g-import-not-at-top
  from hat_jax.data import documents  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  rows = []
  for label, sweep_path, name in (("HAT", HAT_SWEEP, args.hat_run), ("bytes", BYTES_SWEEP, args.bytes_run)):
    config, run_dir, record = ensure_trained(sweep_path, name, args.scaling_workdir)
    config = with_data(config, "english")
    run, params, step = trainer.restore_params(config, run_dir)
    # The first documents of the validation split are all the eval batches read (16 KiB); perturbing
    # only those keeps the python perturbation cheap.
    docs = list(documents.load_documents(config.data, "validation"))[:args.eval_docs]
    clean = None
    for kind in ("clean",) + perturb.KINDS:
      pdocs = docs if kind == "clean" else perturb.perturb_documents(docs, kind, seed=args.seed)
      m = evaluate_batches(run.task, params, batches_from_docs(run.task, pdocs))
      if kind == "clean":
        clean = m
      rows.append({
          "model": label, "run": name, "step": step, "params_non_embedding": record["params_non_embedding"],
          "train_flops": record["flops"], "perturbation": kind, "bpb": m["bits_per_byte"],
          "word_accuracy": m["word_accuracy"], "byte_accuracy": m["byte_accuracy"],
          "bpb_rel_increase": m["bits_per_byte"] / clean["bits_per_byte"] - 1.0,
          "word_acc_rel_drop": 1.0 - m["word_accuracy"] / clean["word_accuracy"]
                               if clean["word_accuracy"] > 0 else float("nan")})
      print(f"[robustness] {label} {kind}: bpb {m['bits_per_byte']:.4f} word acc {m['word_accuracy']:.4f}",
            flush=True)
  return rows


def robustness_markdown(rows) -> str:
  lines = ["| model | perturbation | bpb | bpb rel. increase | word acc | word acc rel. drop |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} ({r['run']}) | {r['perturbation']} | {r['bpb']:.4f} | "
                 f"{100 * r['bpb_rel_increase']:+.1f}% | {r['word_accuracy']:.4f} | "
                 f"{100 * r['word_acc_rel_drop']:+.1f}% |")
  hat = {r["perturbation"]: r for r in rows if r["model"] == "HAT"}
  byt = {r["perturbation"]: r for r in rows if r["model"] == "bytes"}
  lines += ["", "| perturbation | bpb increase bytes / HAT |", "|---|---|"]
  for kind in hat:
    if kind != "clean" and hat[kind]["bpb_rel_increase"] > 0:
      lines.append(f"| {kind} | {byt[kind]['bpb_rel_increase'] / hat[kind]['bpb_rel_increase']:.2f}x |")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Table 2: compute-matched comparison (from the sweep records and their L(C) fits)
# --------------------------------------------------------------------------------------------------


def compute_matched(args) -> list[dict[str, Any]]:
  results = os.path.join(args.scaling_workdir, sweep.RESULTS)
  if not os.path.exists(results):
    raise FileNotFoundError(f"{results} not found: run the scaling sweeps first (experiments/scaling/README.md).")
  with open(results, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  steps = max(r["steps"] for r in records)
  records = [r for r in records if r["steps"] == steps]  # one data budget: compute differs by model only
  hats = sorted((r for r in records if r["model"] == "hat"), key=lambda r: r["flops"])
  byts = sorted((r for r in records if r["model"] == "bytes"), key=lambda r: r["flops"])
  if not hats or not byts:
    raise ValueError(f"{results} needs finished 'hat' and 'bytes' runs at {steps} steps.")
  rows = []
  if args.bpe:
    rows.append(bpe_matched(args, next((h for h in hats if h["name"] == args.hat_run), hats[-1]), byts))
  for h in hats:
    b = min(byts, key=lambda r: abs(math.log(r["flops"] / h["flops"])))
    rows.append({"hat_run": h["name"], "bytes_run": b["name"], "hat_flops_per_byte": h["flops"] / h["bytes"],
                 "bytes_flops_per_byte": b["flops"] / b["bytes"], "flops_ratio_bytes_over_hat": b["flops"] / h["flops"],
                 "hat_bpb": h["val_loss"], "bytes_bpb": b["val_loss"],
                 "hat_word_acc": h["val_word_accuracy"], "bytes_word_acc": b["val_word_accuracy"],
                 "bpe_bpb": "n/a", "bpe_word_acc": "n/a"})
  return rows


def bpe_matched(args, hat: dict, byts: list[dict]) -> dict[str, Any]:
  """Trains the BPE-token LM whose training FLOPs per byte are closest to `hat`'s (width search over
  WIDTHS at fixed depth/vocab), on the same step count and batch, and evaluates it."""
  import importlib  # pylint: disable=g-import-not-at-top

  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  bpe_lm = importlib.import_module("experiments.hat_tables.bpe_lm")
  target = hat["flops"] / hat["bytes"]
  best = None
  for width in (32, 48, 64, 96, 128, 160, 192, 256):  # head counts divisible by the kv heads
    config = bpe_lm.get_config(f"width={width},vocab={args.bpe_vocab}")
    config.train.steps = hat["steps"]
    task = trainer.build(config).task
    rows = task.rows("validation")
    bytes_per_token = float(task.token_bytes[rows.ids].mean())
    n = sweep.count_params(config)["params_non_embedding"]
    fpb = 6.0 * n / bytes_per_token
    if best is None or abs(math.log(fpb / target)) < abs(math.log(best[2] / target)):
      best = (width, config, fpb, n, bytes_per_token)
  width, config, fpb, n, bpt = best
  run_dir = os.path.join(args.workdir, f"bpe{args.bpe_vocab}-w{width}-s{hat['steps']}")
  final_path = os.path.join(run_dir, sweep.FINAL)
  if os.path.exists(final_path):
    with open(final_path, encoding="utf-8") as f:
      final = json.load(f)["metrics"]
  else:
    final = trainer.train(config, run_dir)
    with open(final_path, "w", encoding="utf-8") as f:
      json.dump({"metrics": final}, f)
  b = min(byts, key=lambda r: abs(math.log(r["flops"] / hat["flops"])))
  print(f"[compute_matched] BPE w{width}: {n:,} non-emb params, {bpt:.2f} bytes/token, "
        f"{fpb:.3g} FLOPs/byte, bpb {final['eval/bits_per_byte']:.4f}", flush=True)
  return {"hat_run": hat["name"], "bytes_run": b["name"], "hat_flops_per_byte": target,
          "bytes_flops_per_byte": b["flops"] / b["bytes"], "flops_ratio_bytes_over_hat": b["flops"] / hat["flops"],
          "hat_bpb": hat["val_loss"], "bytes_bpb": b["val_loss"], "hat_word_acc": hat["val_word_accuracy"],
          "bytes_word_acc": b["val_word_accuracy"], "bpe_run": os.path.basename(run_dir),
          "bpe_flops_per_byte": fpb, "bpe_params_non_embedding": n, "bpe_bytes_per_token": bpt,
          "bpe_bpb": float(final["eval/bits_per_byte"]), "bpe_word_acc": "n/a"}


def compute_matched_markdown(rows) -> str:
  lines = ["| HAT run | byte run | FLOPs/byte HAT | FLOPs/byte bytes | ratio | bpb HAT | bpb bytes | "
           "word acc HAT | word acc bytes | BPE baseline |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['hat_run']} | {r['bytes_run']} | {r['hat_flops_per_byte']:.3g} | "
                 f"{r['bytes_flops_per_byte']:.3g} | {r['flops_ratio_bytes_over_hat']:.2f} | {r['hat_bpb']:.4f} | "
                 f"{r['bytes_bpb']:.4f} | {r['hat_word_acc']:.4f} | {r['bytes_word_acc']:.4f} | "
                 + (f"{r['bpe_run']}: {r['bpe_flops_per_byte']:.3g} FLOPs/byte, bpb {r['bpe_bpb']:.4f}, "
                    f"word acc n/a |" if "bpe_run" in r else "— |"))
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Table 4: continued pretraining English -> German
# --------------------------------------------------------------------------------------------------


def init_from_checkpoint(src_config, src_dir: str, config, dst_dir: str) -> None:
  """Writes a step-0 checkpoint into dst_dir holding src's params and a fresh optimizer/data state,
  so `trainer.train(config, dst_dir)` "resumes" from it: a new run initialised from src.

  The trainer has no init-from-checkpoint option; this builds that state outside it instead.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from hat_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  ckpt_dir = os.path.join(dst_dir, "checkpoints")
  with ckpt_lib.Checkpointer(ckpt_dir, keep=None) as ckpt:
    if ckpt.latest_step() is not None:
      return  # already initialised (or further along): train() resumes
    _, params, _ = trainer.restore_params(src_config, src_dir)
    run = trainer.build(config)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": run.tx.init(params)}
    iterator = run.task.train_iterator(int(config.seed), 0, 1)
    ckpt.save(0, state, iterator.get_state(), config)
    ckpt.wait()


def _steps_to(curve: list[tuple[int, float]], target: float) -> float:
  """First step (linear interpolation between evals) where bpb <= target; nan if never."""
  for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
    if v0 <= target:
      return float(s0)
    if v1 <= target:
      return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
  return float(curve[-1][0]) if curve and curve[-1][1] <= target else float("nan")


def adaptation(args) -> list[dict[str, Any]]:
  from hat_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top

  out = []
  for label, sweep_path, name in (("HAT", HAT_SWEEP, args.hat_run), ("bytes", BYTES_SWEEP, args.bytes_run)):
    src_config, src_dir, record = ensure_trained(sweep_path, name, args.scaling_workdir)
    en = with_data(src_config, "english")
    de = with_data(src_config, "german")
    steps = args.adapt_steps
    de.train.steps = steps
    de.train.warmup_steps = max(1, steps // 10)
    de.train.eval_every = max(1, steps // args.adapt_evals)
    de.train.checkpoint_every = steps
    de.train.log_every = max(1, steps // args.adapt_evals)
    dst = os.path.join(args.workdir, f"adapt-{name}")
    en_before = eval_metrics(en, src_dir)["bits_per_byte"]
    de_before = eval_metrics(de, src_dir)["bits_per_byte"]
    init_from_checkpoint(src_config, src_dir, de, dst)
    start = time.perf_counter()
    final = trainer.train(de, dst)
    wall = time.perf_counter() - start
    curve = [(0, de_before)] + [(int(r["step"]), float(r["bits_per_byte"]))
                                for r in metrics_lib.read_jsonl(dst, "eval") if "bits_per_byte" in r]
    curve = sorted(dict(curve).items())
    en_after = eval_metrics(en, dst)["bits_per_byte"]
    flops_per_step = record["flops"] / record["steps"]
    out.append({"model": label, "run": name, "flops_per_step": flops_per_step, "steps": steps,
                "de_bpb_before": de_before, "de_bpb_after": float(final["eval/bits_per_byte"]),
                "de_word_acc_after": float(final.get("eval/word_accuracy", float("nan"))),
                "en_bpb_before": en_before, "en_bpb_after": en_after,
                "en_bpb_rel_increase": en_after / en_before - 1.0, "curve": curve, "wall_s": round(wall, 1)})
    print(f"[adaptation] {label}: DE {de_before:.4f} -> {out[-1]['de_bpb_after']:.4f}, EN {en_before:.4f} -> "
          f"{en_after:.4f}", flush=True)
  target = args.target_bpb or max(r["de_bpb_after"] for r in out)
  for r in out:
    r["target_de_bpb"] = target
    r["steps_to_target"] = _steps_to(r["curve"], target)
    r["flops_to_target"] = r["steps_to_target"] * r["flops_per_step"]
  return out


def adaptation_markdown(rows) -> str:
  lines = [f"Target German bpb: {rows[0]['target_de_bpb']:.4f}", "",
           "| model | FLOPs/step | DE bpb before | DE bpb after | steps to target | FLOPs to target | "
           "EN bpb before | EN bpb after | EN bpb rel. increase |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} ({r['run']}) | {r['flops_per_step']:.3g} | {r['de_bpb_before']:.4f} | "
                 f"{r['de_bpb_after']:.4f} | {r['steps_to_target']:.1f} | {r['flops_to_target']:.3g} | "
                 f"{r['en_bpb_before']:.4f} | {r['en_bpb_after']:.4f} | {100 * r['en_bpb_rel_increase']:+.1f}% |")
  lines += ["", "German bpb during continued pretraining (step: bpb):", ""]
  for r in rows:
    lines.append(f"- {r['model']}: " + ", ".join(f"{s}: {v:.3f}" for s, v in r["curve"]))
  return "\n".join(lines)


TABLES = {"robustness": (robustness, robustness_markdown),
          "compute_matched": (compute_matched, compute_matched_markdown),
          "adaptation": (adaptation, adaptation_markdown)}


def write_outputs(workdir: str, table: str, rows: list[dict[str, Any]], markdown: str, argv: list[str]) -> None:
  os.makedirs(workdir, exist_ok=True)
  flat = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
  with open(os.path.join(workdir, f"{table}.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(flat[0]))
    w.writeheader()
    w.writerows(flat)
  with open(os.path.join(workdir, f"{table}.json"), "w", encoding="utf-8") as f:
    json.dump({"command": "python -m experiments.hat_tables.run " + " ".join(argv), "rows": rows}, f, indent=2)
  with open(os.path.join(workdir, f"{table}.md"), "w", encoding="utf-8") as f:
    f.write(markdown + "\n")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="python -m experiments.hat_tables.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--table", required=True, choices=sorted(TABLES))
  parser.add_argument("--workdir", default="runs/hat_tables")
  parser.add_argument("--scaling-workdir", default="runs/scaling")
  parser.add_argument("--hat-run", default=DEFAULT_HAT_RUN, help=f"run of {HAT_SWEEP}")
  parser.add_argument("--bytes-run", default=DEFAULT_BYTES_RUN, help=f"run of {BYTES_SWEEP}")
  parser.add_argument("--bpe", type=int, default=1, help="compute_matched: train the BPE baseline (0: skip)")
  parser.add_argument("--bpe-vocab", type=int, default=1024, help="BPE vocabulary of the token baseline")
  parser.add_argument("--seed", type=int, default=0, help="perturbation seed")
  parser.add_argument("--eval-docs", type=int, default=2, help="validation documents perturbed (robustness)")
  parser.add_argument("--adapt-steps", type=int, default=150, help="continued-pretraining steps on German")
  parser.add_argument("--adapt-evals", type=int, default=6, help="German evaluations during adaptation")
  parser.add_argument("--target-bpb", type=float, default=0.0,
                      help="German bpb target (0: the worse of the two models' final German bpb)")
  args = parser.parse_args(argv)
  fn, render = TABLES[args.table]
  try:
    rows = fn(args)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  markdown = render(rows)
  write_outputs(args.workdir, args.table, rows, markdown, argv)
  print(markdown)
  return 0


if __name__ == "__main__":
  sys.exit(main())
