"""VAR vs raster-order AR vs Axial Transformer on MNIST 16x16, trained and measured in one run.

1. Train the multi-scale VQ tokenizer (configs/vqvae.py) with the generic trainer and report test
   reconstruction metrics; its run (<workdir>/vqvae) is the tokenizer the next models restore.
2. Train VAR (configs/var.py), the raster AR over the *same* 130 VQ tokens (configs/raster_ar.py) and
   the Axial Transformer over pixels (configs/axial.py) with the trainer, same step count and batch.
3. Test NLL from the trainer's eval (on `--eval_examples` MNIST test images): bits per image over the VQ
   tokens (VAR, raster AR: same tokens, directly comparable) and pixel bits/dim (Axial).
4. Sampling: for each model, one jitted class-conditional sampler per batch in `--sample_batches`
   (labels 0, 1, ..., 9, 0, ... so batch 1 is the latency case), warmed up (compile excluded), then
   `--repeats` rounds that time each model once in turn (so a load change on a shared machine hits all
   models alike); the median -> images/s. Sequential network passes per image (VAR: one per scale;
   raster AR: one per token; Axial: H outer + H*W inner row passes).
5. Write results.md / results.json and PNG grids of class-conditional samples into --workdir.

  python -m experiments.images.benchmark --workdir=runs/images   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import axial as axial_config
from configs import raster_ar as raster_config
from configs import var as var_config
from configs import vqvae as vqvae_config
from hat_jax.generate import images as image_gen
from hat_jax.models.vqvae import MultiScaleVQVAE
from hat_jax.train import trainer


def configure(config, args, name: str):
  config.train.steps = {"vqvae": args.vq_steps, "axial": args.axial_steps}.get(name, args.steps)
  steps = int(config.train.steps)
  config.train.batch_size = args.batch
  config.train.warmup_steps = max(1, steps // 20)
  config.train.log_every = max(1, steps // 10)
  config.train.eval_every = steps
  config.train.checkpoint_every = steps
  config.data.eval_batch_size = 100
  config.data.eval_examples = args.eval_examples
  config.data.source = args.source
  config.sample.output_dir = os.path.join(args.workdir, name)
  if "tokenizer" in config:
    config.tokenizer.workdir = os.path.join(args.workdir, "vqvae")
  return config


def train(config, workdir: str, previous: dict) -> dict:
  t0 = time.perf_counter()
  final = trainer.train(config, workdir)
  final["train_seconds"] = time.perf_counter() - t0
  if "eval/loss" not in final:  # already trained (rerun): evaluate the checkpoint, keep the first timing
    final.update(trainer.evaluate(config, workdir))
    final["train_seconds"] = previous.get("train_seconds", float("nan"))
  return final


def time_samplers(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, object]]:
  """Median seconds per call of each fn(key), timed round-robin; and each fn's warm-up output."""
  outs = {name: jax.block_until_ready(fn(jax.random.key(0))) for name, fn in fns.items()}  # compile + warm up
  times = {name: [] for name in fns}
  for r in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(jax.random.key(r + 1)))
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}, outs


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=800, help="training steps for VAR, raster AR and Axial")
  p.add_argument("--axial_steps", type=int, default=500, help="Axial steps (its step costs ~2x VAR's)")
  p.add_argument("--vq_steps", type=int, default=600)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--eval_examples", type=int, default=2000, help="first MNIST test images for the NLL (0 = all)")
  p.add_argument("--sample_batches", default="1,10,40", help="images per sampling call, comma separated; the "
                 "sample grids come from the largest multiple of 10")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--cfg_scale", type=float, default=2.0)
  p.add_argument("--source", default="mnist", choices=["mnist", "synthetic"])
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  batches = [int(b) for b in args.sample_batches.split(",")]
  if not batches or any(b < 1 for b in batches) or args.repeats < 1:
    raise ValueError(f"--sample_batches must be positive ints and --repeats >= 1, got {args.sample_batches!r} and "
                     f"{args.repeats}.")
  grid_batch = max((b for b in batches if b % 10 == 0), default=None)
  previous_path = os.path.join(args.workdir, "results.json")
  previous = json.load(open(previous_path)) if os.path.exists(previous_path) else {}
  results: dict = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, "
                   f"jax {jax.__version__} {jax.default_backend()}", "args": vars(args)}

  # 1. Tokenizer.
  cfgs = {"vqvae": configure(vqvae_config.get_config("small"), args, "vqvae")}
  results["vqvae"] = train(cfgs["vqvae"], os.path.join(args.workdir, "vqvae"), previous.get("vqvae", {}))
  print(trainer.generate(cfgs["vqvae"], os.path.join(args.workdir, "vqvae")), flush=True)

  # 2. Generators.
  cfgs["var"] = configure(var_config.get_config("small"), args, "var")
  cfgs["raster_ar"] = configure(raster_config.get_config("small"), args, "raster_ar")
  cfgs["axial"] = configure(axial_config.get_config("small"), args, "axial")
  for config in (cfgs["var"], cfgs["raster_ar"]):
    config.sample.cfg_scale = args.cfg_scale
  for name in ("var", "raster_ar", "axial"):
    results[name] = train(cfgs[name], os.path.join(args.workdir, name), previous.get(name, {}))
    print(name, {k: round(v, 4) for k, v in results[name].items() if k.startswith("eval/")}, flush=True)

  # 3-4. Sampling speed, all in this process one after another.
  samplers = {}
  run, var_params, _ = trainer.restore_params(cfgs["var"], os.path.join(args.workdir, "var"))
  vt = run.task
  samplers["var"] = (len(vt.var_cfg.scales), lambda key, labels, vt=vt, prm=var_params: image_gen.generate_var(
      vt.model, prm, vt.vq, vt.vq_params, labels, key, cfg_scale=args.cfg_scale)[0])
  run, ar_params, _ = trainer.restore_params(cfgs["raster_ar"], os.path.join(args.workdir, "raster_ar"))
  rt = run.task
  samplers["raster_ar"] = (rt.seq_len, lambda key, labels, rt=rt, prm=ar_params: rt.vq.apply(
      rt.vq_params, image_gen.generate_raster_ar(rt.model, prm, labels, key, num_tokens=rt.seq_len,
                                                 cfg_scale=args.cfg_scale),
      method=MultiScaleVQVAE.decode))
  run, ax_params, _ = trainer.restore_params(cfgs["axial"], os.path.join(args.workdir, "axial"))
  at = run.task
  size = at.axial_cfg.image_size
  samplers["axial"] = (size + size * size, lambda key, labels, at=at, prm=ax_params: image_gen.generate_axial(
      at.model, prm, labels, key))
  for nb in batches:
    labels = jnp.arange(nb, dtype=jnp.int32) % 10
    seconds, images = time_samplers(
        {name: (lambda key, fn=fn: fn(key, labels)) for name, (_, fn) in samplers.items()}, args.repeats)
    for name, (steps, _) in samplers.items():
      results[name].update({"sample_steps": steps, f"sample_seconds@{nb}": seconds[name],
                            f"images_per_sec@{nb}": nb / seconds[name]})
      if nb == grid_batch:
        grid = image_gen.image_grid(np.asarray(images[name]), rows=nb // 10)
        image_gen.write_png(os.path.join(args.workdir, f"samples_{name}.png"), grid)
      print(name, f"{steps} sequential passes, {seconds[name]:.4f} s per {nb} images", flush=True)

  # 5. Table.
  v, r, a, q = results["var"], results["raster_ar"], results["axial"], results["vqvae"]
  rows = [
      ("VAR (next-scale, 6 scales)", v["eval/bits_per_image"], v["eval/bits_per_dim"], "-", v),
      ("raster AR over the same VQ tokens", r["eval/bits_per_image"], r["eval/bits_per_dim"], "-", r),
      ("Axial Transformer (pixels)", a["eval/bits_per_dim"] * size * size, "-", a["eval/bits_per_dim"], a),
  ]
  fmt = lambda x: x if isinstance(x, str) else f"{x:.3f}"  # noqa: E731
  lines = [
      "| model | test NLL, bits/image | VQ-token bits per pixel | pixel bits/dim | sequential passes | "
      + " | ".join(f"images/s, batch {nb}" for nb in batches) + " | train s |",
      "|---|---|---|---|---|" + "---|" * len(batches) + "---|",
  ]
  for label, bpi, tok_bpd, pix_bpd, res in rows:
    speeds = " | ".join(f"{res[f'images_per_sec@{nb}']:.1f}" for nb in batches)
    lines.append(f"| {label} | {bpi:.1f} | {fmt(tok_bpd)} | {fmt(pix_bpd)} | {res['sample_steps']} | {speeds} | "
                 f"{res['train_seconds']:.0f} |")
  lines += [
      "",
      f"Tokenizer (test, {args.eval_examples or 10000} images): PSNR {q['eval/psnr']:.2f} dB, MSE "
      f"{q['eval/recon_mse']:.5f} on [0, 1] pixels, L1 {q['eval/recon_l1']:.4f}, codebook used per batch "
      f"{q['eval/codebook_used']:.2f}.",
      f"VAR vs raster AR: {r['sample_steps'] / v['sample_steps']:.1f}x fewer sequential steps; vs Axial: "
      f"{a['sample_steps'] / v['sample_steps']:.1f}x fewer.",
  ] + [f"Batch {nb}: VAR samples {v[f'images_per_sec@{nb}'] / r[f'images_per_sec@{nb}']:.1f}x faster than the "
       f"raster AR and {v[f'images_per_sec@{nb}'] / a[f'images_per_sec@{nb}']:.1f}x faster than Axial." for nb in batches]
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
  main()
