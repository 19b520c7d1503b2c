"""HMAR vs VAR on MNIST 16x16, same tokenizer, matched parameters, trained and measured in one run.

1. The multi-scale VQ tokenizer (configs/vqvae.py:small) in <workdir>/vqvae -- the same run benchmark.py
   trains and reuses, so HMAR and VAR read one tokenizer checkpoint.
2. VAR (configs/var.py:small) and HMAR (configs/hmar.py:small: VAR's model + the Markovian mask, token /
   MASK embedding, MaskGIT training within scales) with the same steps, batch, learning rate and seed.
3. Test NLL (trainer eval on `--eval_examples` MNIST test images): VAR's bits/image; HMAR's one-step NLL
   (all tokens of a scale predicted at once: the same unit and factorisation as VAR's) and its random-order
   masked NLL under the sampling schedule (`HMARTask` docstring).
4. Training step time: one jitted loss + gradient step per model on the same batch, compile excluded,
   `--repeats` round-robin rounds, median.
5. Sampling time at batches `--sample_batches` (CFG doubling the batch, decode to pixels included): VAR,
   HMAR with the schedule, HMAR with one step per scale; round-robin, median.
6. Attention FLOPs per sampled image and per training image (live pairs of each mask, and what our
   implementation executes), the kernels' visited tiles at this layout and at VAR's 256 px layout, and
   XLA's count and peak memory (temporaries + outputs of the compiled sampler) per sampled image.
7. PNG grids: samples_var.png, samples_hmar.png (columns = classes 0-9), inpainting_hmar.png (rows: test
   images, lower half removed, HMAR's lower half, a second HMAR draw).

  python -m experiments.images.hmar_vs_var --workdir=runs/images   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import hmar as hmar_config
from configs import var as var_config
from configs import vqvae as vqvae_config
from experiments.images.benchmark import configure, time_samplers, train
from hat_jax.generate import images as image_gen
from hat_jax.kernels import MaskSpec, tiling
from hat_jax.models import hmar as hmar_lib
from hat_jax.train import flops as flops_lib
from hat_jax.train import metrics as metrics_lib
from hat_jax.train import trainer

VAR256_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def compiled_stats(fn, *args) -> dict[str, float]:
  compiled = jax.jit(fn).lower(*args).compile()
  out = {"xla_flops": metrics_lib.compiled_flops(compiled) or float("nan")}
  try:
    mem = compiled.memory_analysis()
    out["temp_bytes"] = float(mem.temp_size_in_bytes)
    out["output_bytes"] = float(mem.output_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # backends without memory analysis
    out["temp_bytes"] = out["output_bytes"] = float("nan")
  return out


def attention_costs(var_cfg, schedule) -> dict[str, float]:
  """Attention FLOPs (4 x heads x head_dim per (query, key) pair per layer) per image, forward."""
  st = var_cfg.stack
  per_pair = flops_lib.layer_pair_flops(st) * st.num_layers
  n = hmar_lib.scale_lengths(var_cfg.scales)
  length = sum(n)
  return {
      # training forward pass, one image
      "train_var_live": per_pair * hmar_lib.attention_pairs(var_cfg.scales, None),
      "train_var_executed": per_pair * length ** 2,  # explicit scale ids: the dense masked XLA path
      "train_hmar": per_pair * hmar_lib.attention_pairs(var_cfg.scales, 1),  # layout path: exactly the live pairs
      # sampling, one image, CFG doubling included (x2)
      "sample_var_live": 2 * per_pair * hmar_lib.attention_pairs(var_cfg.scales, None),
      "sample_var_executed": 2 * per_pair * length * length,  # every step reads the whole preallocated cache
      "generate_hmar": 2 * per_pair * sum(s * nk * nk for s, nk in zip(schedule, n)),
      "sample_hmar_1step": 2 * per_pair * sum(nk * nk for nk in n),
  }


def tile_table(scales, blocks=(16, 64)) -> list[str]:
  lengths = hmar_lib.scale_lengths(scales)
  t = sum(lengths)
  rows = []
  for b in blocks:
    dense = (tiling.round_up(t, b) // b) ** 2
    live = {w: int(tiling.static_live_tiles(MaskSpec(causal=True, window=w, blocks=lengths), t, t, b, b).sum())
            for w in (None, 2, 1)}
    span = tiling.static_spans(MaskSpec(causal=True, window=1, blocks=lengths), t, t, b, b)[0]
    rows.append(f"| {scales} ({t} positions) | {b}x{b} | {dense} | {live[None]} | {live[2]} | {live[1]} | "
                f"{live[1] / live[None]:.2f} | {span} of {tiling.round_up(t, b) // b} |")
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=600, help="training steps of VAR and HMAR (each)")
  p.add_argument("--vq_steps", type=int, default=600, help="tokenizer steps (skipped when <workdir>/vqvae exists)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--eval_examples", type=int, default=2000, help="first MNIST test images for the NLL (0 = all)")
  p.add_argument("--sample_batches", default="1,10,40")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--cfg_scale", type=float, default=2.0)
  p.add_argument("--schedule", default=hmar_config.DEFAULT_SCHEDULE, help="HMAR masked steps per scale")
  p.add_argument("--source", default="mnist", choices=["mnist", "synthetic"])
  args = p.parse_args()
  # benchmark.configure reads these; the Axial model is not trained here.
  args.axial_steps = args.steps
  os.makedirs(args.workdir, exist_ok=True)
  batches = [int(b) for b in args.sample_batches.split(",")]
  grid_batch = max((b for b in batches if b % 10 == 0), default=None)
  previous_path = os.path.join(args.workdir, "hmar_results.json")
  previous = json.load(open(previous_path)) if os.path.exists(previous_path) else {}
  results: dict = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, "
                   f"jax {jax.__version__} {jax.default_backend()}", "args": vars(args)}

  # 1-2. Tokenizer, then VAR and HMAR on it.
  cfgs = {"vqvae": configure(vqvae_config.get_config("small"), args, "vqvae"),
          "var": configure(var_config.get_config("small"), args, "var"),
          "hmar": configure(hmar_config.get_config("small"), args, "hmar")}
  cfgs["hmar"].sample.steps = args.schedule
  for name in ("var", "hmar"):
    cfgs[name].sample.cfg_scale = args.cfg_scale
  for name in ("vqvae", "var", "hmar"):
    results[name] = train(cfgs[name], os.path.join(args.workdir, name), previous.get(name, {}))
    print(name, {k: round(v, 4) for k, v in results[name].items() if k.startswith("eval/")}, flush=True)
    with open(previous_path, "w") as f:  # a rerun resumes the checkpoints and keeps these training times
      json.dump({**previous, **{k: results[k] for k in ("vqvae", "var", "hmar") if k in results}}, f, indent=1,
                default=float)

  runs = {name: trainer.restore_params(cfgs[name], os.path.join(args.workdir, name)) for name in ("var", "hmar")}
  vt, var_params = runs["var"][0].task, runs["var"][1]
  ht, hmar_params = runs["hmar"][0].task, runs["hmar"][1]
  for name in ("var", "hmar"):
    results[name]["params"] = runs[name][0].num_params
  schedule = ht.schedule
  _ = vt.vq_params, ht.vq_params  # restore the tokenizer outside of any jit trace

  # 4. Training step time: loss + gradients on the same batch (the optimizer update is the same for both).
  batch = {k: v[:args.batch] for k, v in vt.features("train").items()}
  grad_fns = {name: jax.jit(jax.value_and_grad(lambda prm, b, r, t=t: t.loss(prm, b, r)[0]))
              for name, t in (("var", vt), ("hmar", ht))}
  step_args = {"var": var_params, "hmar": hmar_params}
  step_seconds, _ = time_samplers({name: (lambda _key, n=name: grad_fns[n](step_args[n], batch, jax.random.key(0)))
                                   for name in grad_fns}, args.repeats)
  for name, sec in step_seconds.items():
    results[name]["train_step_seconds"] = sec
    results[name]["train_step_xla_flops"] = compiled_stats(
        lambda prm, b, t=(vt if name == "var" else ht): jax.value_and_grad(
            lambda q: t.loss(q, b, jax.random.key(0))[0])(prm), step_args[name], batch)["xla_flops"]
  print("train step seconds", step_seconds, flush=True)

  # 5. Sampling speed, all in this process, round-robin.
  samplers = {
      "var": lambda key, labels: image_gen.generate_var(vt.model, var_params, vt.vq, vt.vq_params, labels, key,
                                                        cfg_scale=args.cfg_scale)[0],
      "hmar": lambda key, labels: ht.generate_images(hmar_params, labels, key)[0],
      "hmar_1step": lambda key, labels: ht.generate_images(hmar_params, labels, key, steps=1)[0],
  }
  passes = {"var": len(vt.var_cfg.scales), "hmar": sum(schedule), "hmar_1step": len(vt.var_cfg.scales)}
  for name in samplers:
    results.setdefault(name, {})["sample_passes"] = passes[name]
  for nb in batches:
    labels = jnp.arange(nb, dtype=jnp.int32) % 10
    seconds, images = time_samplers({name: (lambda key, fn=fn: fn(key, labels)) for name, fn in samplers.items()},
                                    args.repeats)
    for name in samplers:
      results[name].update({f"sample_seconds@{nb}": seconds[name], f"images_per_sec@{nb}": nb / seconds[name]})
      stats = compiled_stats(lambda key, fn=samplers[name]: fn(key, labels), jax.random.key(0))
      results[name].update({f"sample_{k}@{nb}": v / nb for k, v in stats.items()})  # per image
      if nb == grid_batch and name in ("var", "hmar"):
        image_gen.write_png(os.path.join(args.workdir, f"samples_{name}.png"),
                            image_gen.image_grid(np.asarray(images[name]), rows=nb // 10))
      print(name, f"{passes[name]} passes, {seconds[name]:.4f} s per {nb} images", flush=True)

  # Inpainting grid: the lower half of 10 test images regenerated, two draws.
  size = ht.vq_cfg.image_size
  region = np.zeros((size, size), bool)
  region[size // 2:] = True
  originals, shown, first = ht.inpaint(hmar_params, jax.random.key(11), region, 10)
  _, _, second = ht.inpaint(hmar_params, jax.random.key(12), region, 10)
  image_gen.write_png(os.path.join(args.workdir, "inpainting_hmar.png"),
                      image_gen.image_grid(np.concatenate([originals, shown, first, second]), rows=4))

  # 6. Table.
  costs = attention_costs(vt.var_cfg, schedule)
  results["attention_flops_per_image"] = costs
  v, h, h1 = results["var"], results["hmar"], results["hmar_1step"]
  mib = 1 << 20
  big = max(batches)
  lines = [
      "| model | params | test NLL, bits/image | train step, ms (batch "
      f"{args.batch}) | passes per image | "
      + " | ".join(f"images/s, batch {nb}" for nb in batches)
      + f" | attention MFLOPs per sampled image | XLA MFLOPs per sampled image | peak MiB per image (batch {big}) |",
      "|---|---|---|---|---|" + "---|" * len(batches) + "---|---|---|",
  ]

  def row(label, res, nll, train_ms, attn):
    speeds = " | ".join(f"{res[f'images_per_sec@{nb}']:.1f}" for nb in batches)
    peak = (res[f"sample_temp_bytes@{big}"] + res[f"sample_output_bytes@{big}"]) / mib
    return (f"| {label} | {res.get('params', '-'):,} | {nll} | {train_ms} | {res['sample_passes']} | {speeds} | "
            f"{attn / 1e6:.3f} | {res[f'sample_xla_flops@{big}'] / 1e6:.2f} | {peak:.3f} |")

  lines += [
      row("VAR (block-causal, 6 scales)", {**v, "params": v["params"]}, f"{v['eval/bits_per_image']:.1f}",
          f"{1e3 * v['train_step_seconds']:.1f}", costs["sample_var_executed"]),
      row(f"HMAR, schedule {schedule}", {**h, "params": h["params"]},
          f"{h['eval/bits_per_image_steps']:.1f} (random-order, this schedule)", f"{1e3 * h['train_step_seconds']:.1f}",
          costs["generate_hmar"]),
      row("HMAR, 1 step per scale", {**h1, "params": h["params"]}, f"{h['eval/bits_per_image']:.1f} (one-step)",
          "same model", costs["sample_hmar_1step"]),
      "",
      f"Training step (loss + gradients, batch {args.batch}): HMAR {v['train_step_seconds'] / h['train_step_seconds']:.2f}x "
      f"VAR's speed ({1e3 * h['train_step_seconds']:.1f} vs {1e3 * v['train_step_seconds']:.1f} ms; XLA-counted "
      f"{h['train_step_xla_flops'] / 1e9:.3f} vs {v['train_step_xla_flops'] / 1e9:.3f} GFLOPs). Trainer wall time: "
      f"VAR {v['train_seconds']:.0f} s, HMAR {h['train_seconds']:.0f} s for {args.steps} steps.",
  ] + [f"Sampling, batch {nb}: HMAR ({schedule}) {h[f'images_per_sec@{nb}'] / v[f'images_per_sec@{nb}']:.2f}x VAR's "
       f"images/s; HMAR one step per scale {h1[f'images_per_sec@{nb}'] / v[f'images_per_sec@{nb}']:.2f}x."
       for nb in batches] + [
      f"Attention FLOPs per training image (forward): VAR {costs['train_var_live'] / 1e6:.3f} M live pairs, "
      f"{costs['train_var_executed'] / 1e6:.3f} M executed (explicit scale ids: dense); HMAR "
      f"{costs['train_hmar'] / 1e6:.3f} M live = executed (static layout). Per sampled image (CFG x2): VAR "
      f"{costs['sample_var_live'] / 1e6:.3f} M live, {costs['sample_var_executed'] / 1e6:.3f} M executed (dense over "
      f"the preallocated cache); HMAR {costs['generate_hmar'] / 1e6:.3f} M with the schedule, "
      f"{costs['sample_hmar_1step'] / 1e6:.3f} M with one step per scale.",
      f"Test NLL, HMAR: one-step {h['eval/bits_per_image']:.1f} bits/image (same unit and factorisation as VAR's "
      f"{v['eval/bits_per_image']:.1f}); random-order masked NLL with schedule {schedule}: "
      f"{h['eval/bits_per_image_steps']:.1f}.",
      "",
      "Kernel tiles (q tile x k tile pairs visited; the per-query-tile span is the TPU grid's static extent):",
      "",
      "| layout | tile | dense | VAR block-causal | Markov window 2 | HMAR block-diagonal | HMAR / VAR | span per q tile |",
      "|---|---|---|---|---|---|---|---|",
      *tile_table(vt.var_cfg.scales), *tile_table(VAR256_SCALES, (64, 128)),
  ]
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(args.workdir, "hmar_results.md"), "w") as f:
    f.write(table + "\n")
  with open(previous_path, "w") as f:
    json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
  main()
