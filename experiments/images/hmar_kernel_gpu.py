"""Our Pallas block-attention kernel on VAR's and HMAR's scale masks, compiled for a GPU: forward and
forward + backward times at VAR's 256 px and 512 px scale layouts, and the kernel's error against the
float32 oracle. Needs only jax (the kernels import nothing else), so it runs on a bare GPU machine:

  python -m experiments.images.hmar_kernel_gpu --out=hmar_kernel_gpu.json

Masks (all our kernel, `block_attention`, GPU schedule, 64 x 64 tiles):
  var_explicit   VAR's mask as the model passes it: MaskSpec(causal=True) with explicit scale ids
                 (tiles skipped by the run-time per-tile min/max)
  var_layout     the same mask as a static block layout, MaskSpec(causal=True, blocks=...)
  markov_w2      a scale and its predecessor, MaskSpec(causal=True, window=2, blocks=...)
  hmar           HMAR's block-diagonal Markovian mask, MaskSpec(causal=True, window=1, blocks=...)
  dense          no mask (every pair), the cost without any skipping
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.kernels import MaskSpec, block_attention, reference_attention
from hat_jax.kernels.masks import layout_positions
from hat_jax.timing import wall_times

LAYOUTS = {"256px": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "512px": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}


def masks(scales):
  blocks = tuple(pn * pn for pn in scales)
  return {"dense": (MaskSpec(causal=False), False), "var_explicit": (MaskSpec(causal=True), True),
          "var_layout": (MaskSpec(causal=True, blocks=blocks), False),
          "markov_w2": (MaskSpec(causal=True, window=2, blocks=blocks), False),
          "hmar": (MaskSpec(causal=True, window=1, blocks=blocks), False)}


def pairs(spec, ids):
  qp, kp = ids[:, None], ids[None, :]
  live = np.ones(qp.shape[:1] + kp.shape[1:], bool)
  if spec.causal:
    live &= kp <= qp
  if spec.window is not None:
    live &= qp - kp < spec.window
  return int(live.sum())


def bench(fn, *args, repeats=20):
  return float(np.median(wall_times(fn, *args, repeats=repeats)))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="hmar_kernel_gpu.json")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--repeats", type=int, default=20)
  args = p.parse_args()
  results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "args": vars(args), "rows": []}
  for name, scales in LAYOUTS.items():
    t = sum(pn * pn for pn in scales)
    ids_np = np.repeat(np.arange(len(scales)), [pn * pn for pn in scales]).astype(np.int32)
    ids = jnp.broadcast_to(jnp.asarray(ids_np), (args.batch, t))
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (args.batch, t, args.heads, args.head_dim)
    q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
    for mname, (spec, explicit) in masks(scales).items():
      pos = dict(q_positions=ids, kv_positions=ids) if explicit else {}
      fwd = jax.jit(lambda q, k, v, spec=spec, pos=pos: block_attention(q, k, v, spec, **pos))
      fwd_bwd = jax.jit(lambda q, k, v, do, spec=spec, pos=pos: jax.vjp(
          lambda q, k, v: block_attention(q, k, v, spec, **pos), q, k, v)[1](do))
      out = fwd(q, k, v)
      # Error against the float32 oracle with explicit scale ids (the rule written out).
      plain = MaskSpec(causal=spec.causal, window=spec.window)
      ref_pos = dict(q_positions=ids, kv_positions=ids) if spec.causal else {}
      f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
      ref = jax.jit(lambda q, k, v: reference_attention(f32(q), f32(k), f32(v), plain, **ref_pos))(q, k, v)
      err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
      row = {"layout": name, "length": t, "mask": mname, "live_pairs": pairs(spec, ids_np) if spec.causal else t * t,
             "fwd_ms": 1e3 * bench(fwd, q, k, v, repeats=args.repeats),
             "fwd_bwd_ms": 1e3 * bench(fwd_bwd, q, k, v, do, repeats=args.repeats), "max_rel_err_bf16": err}
      if spec.blocks is not None:
        assert layout_positions(spec, t).tolist() == ids_np.tolist()
      results["rows"].append(row)
      print(json.dumps(row), flush=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
