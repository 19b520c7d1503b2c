"""Benchmark block attention: prints a table of timings and ratios measured side by side in one run.

  python tools/bench_attention.py                      # CPU: blocked XLA vs dense masked attention
  python tools/bench_attention.py --lengths 2048,8192  # any backend; on GPU/TPU adds the kernels

On every backend: the blocked XLA path (`attention(impl="xla")`, window mask, default positions) vs the
dense masked oracle as the sequence grows; with a fixed window the blocked cost per token must stay flat
(linear total cost) while dense grows linearly per token (quadratic total).
On GPU it adds our Pallas kernel vs `jax.nn.dot_product_attention` (cudnn, and xla with
`local_window_size`) vs the dense reference, forward and forward+backward, with TFLOP/s counted on the
unmasked work only and the fraction of the device's dense bf16 peak. On TPU it adds our Mosaic kernel
vs splash attention. Pallas interpret mode (CPU) is a simulator, so it is never timed.
No pass/fail here: timings are not tests.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from hat_jax.kernels import MaskSpec, attention, block_attention, reference_attention  # noqa: E402

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' datasheets (SXM parts).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def _time(fn, *args, reps: int) -> float:
  """Median wall seconds of a jitted call (after one compile + warm-up call)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def unmasked_pairs(spec: MaskSpec, length: int) -> int:
  """(query, key) pairs the mask keeps for arange positions; FLOPs are counted on these only."""
  q = np.arange(length)
  if spec.window is not None:
    return int(np.minimum(q + 1, spec.window).sum())
  return int((q + 1).sum()) if spec.causal else length * length


def attention_flops(spec, batch, heads, head_dim, length, backward: bool) -> float:
  fwd = 4.0 * batch * heads * head_dim * unmasked_pairs(spec, length)  # QK^T and PV, 2 flops per MAC
  return fwd * (3.5 if backward else 1.0)  # backward = 5 matmuls of that size vs 2 forward


def _fwd_bwd(fn):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _impls(spec: MaskSpec, backend: str):
  """name -> fn(q, k, v) for the current backend."""
  impls = {
      "dense reference": lambda q, k, v: reference_attention(q, k, v, spec),
      "xla blocked (ours)": lambda q, k, v: attention(q, k, v, spec, impl="xla"),
  }
  window = None if spec.window is None else (spec.window - 1, 0)
  if backend in ("gpu", "tpu"):
    impls["pallas (ours)"] = lambda q, k, v: block_attention(q, k, v, spec)
  if backend == "gpu":
    impls["jax.nn cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=spec.causal, local_window_size=window, implementation="cudnn")
    impls["jax.nn xla"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=spec.causal, local_window_size=window, implementation="xla")
  if backend == "tpu" and spec.window is not None:
    impls["splash"] = functools.partial(_splash, spec)
  return impls


def _splash(spec, q, k, v):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, t, h, d = q.shape
  mask = sm.MultiHeadMask([sm.LocalMask((t, t), window_size=(spec.window - 1, 0), offset=0)] * h)
  kernel = sk.make_splash_mha_single_device(mask)
  to_hd = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
  return to_hd(jax.vmap(kernel)(to_hd(q) * d**-0.5, to_hd(k), to_hd(v)))


def _peak() -> float | None:
  kind = jax.devices()[0].device_kind
  return next((p for name, p in BF16_PEAK_TFLOPS.items() if name in kind), None)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="", help="comma-separated sequence lengths")
  parser.add_argument("--window", type=int, default=128)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--dtype", default="", help="float32 / bfloat16 (default: f32 on CPU, bf16 else)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--backward", action="store_true", help="also time forward+backward")
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  on_cpu = backend == "cpu"
  lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else (
      [512, 1024, 2048, 4096] if on_cpu else [1024, 4096, 16384, 32768])
  dtype = jnp.dtype(args.dtype or ("float32" if on_cpu else "bfloat16"))
  spec = MaskSpec(window=args.window)
  peak = _peak()
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, dtype {dtype.name}, "
        f"batch {args.batch}, heads {args.heads}/{args.kv_heads} kv, head_dim {args.head_dim}, "
        f"mask {spec}, median of {args.reps}")
  modes = [("fwd", False)] + ([("fwd+bwd", True)] if args.backward else [])
  header = f"{'T':>6} {'mode':>7} {'impl':>20} {'ms':>10} {'us/token':>9} {'vs dense':>9} {'TFLOP/s':>8}"
  header += f" {'% peak':>7}" if peak else ""
  print(header)
  for length in lengths:
    keys = jax.random.split(jax.random.PRNGKey(length), 3)
    q = jax.random.normal(keys[0], (args.batch, length, args.heads, args.head_dim), dtype)
    k = jax.random.normal(keys[1], (args.batch, length, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(keys[2], (args.batch, length, args.kv_heads, args.head_dim), dtype)
    for mode, backward in modes:
      times = {}
      for name, fn in _impls(spec, backend).items():
        compiled = _fwd_bwd(fn) if backward else jax.jit(fn)
        try:
          times[name] = _time(compiled, q, k, v, reps=args.reps)
        except Exception as e:  # noqa: BLE001  (an unsupported shape must not kill the whole table)
          print(f"{length:>6} {mode:>7} {name:>20}  failed: {type(e).__name__}: {str(e)[:80]}")
      dense = times.get("dense reference")
      for name, sec in times.items():
        tflops = attention_flops(spec, args.batch, args.heads, args.head_dim, length, backward) / sec / 1e12
        ratio = f"{dense / sec:9.2f}" if dense else f"{'-':>9}"
        row = (f"{length:>6} {mode:>7} {name:>20} {sec * 1e3:10.2f} {sec * 1e6 / length:9.2f} {ratio} "
               f"{tflops:8.3f}")
        print(row + (f" {100 * tflops / peak:6.1f}%" if peak else ""), flush=True)


if __name__ == "__main__":
  main()
