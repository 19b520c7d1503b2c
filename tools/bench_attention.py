"""Benchmark block attention: prints a table of timings and ratios measured side by side in one run.

  python tools/bench_attention.py                               # CPU: blocked XLA vs dense, window 128
  python tools/bench_attention.py --backward --json out.json   # GPU/TPU: adds the kernels and anchors

Every call processes the same number of tokens (--tokens; batch = tokens // length), so with a window
or chunk mask the blocked paths' time must stay flat as length grows (linear total cost) while dense
masked attention grows linearly (quadratic total).
On GPU it adds our Pallas kernel (each --kernel_configs tiling) vs `jax.nn.dot_product_attention` (cudnn,
and xla, both with `local_window_size` for windows; jax.nn has no chunk mask) vs the dense reference,
forward and forward+backward, with TFLOP/s counted on the unmasked work only, the fraction of the
device's dense bf16 peak, and the speed ratio against the best anchor in the same row group. On TPU it
adds our Mosaic kernel vs splash attention. Pallas interpret mode (CPU) is a simulator, never timed.
No pass/fail here: timings are not tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.kernels import MaskSpec, attention, auto, block_attention, reference_attention
from hat_jax.kernels.masks import element_mask
from hat_jax.timing import wall_times

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' datasheets (SXM parts).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def unmasked_pairs(spec: MaskSpec, length: int) -> int:
  """(query, key) pairs the mask keeps for arange positions; FLOPs are counted on these only."""
  k = np.arange(length)[None]
  # The kernels' own predicate, in row blocks: a full [T, T] boolean would not fit at 32K.
  return sum(int(element_mask(spec, k[:, start:start + 1024].T, k).sum()) for start in range(0, length, 1024))


def attention_flops(spec, batch, heads, head_dim, length, backward: bool) -> float:
  fwd = 4.0 * batch * heads * head_dim * unmasked_pairs(spec, length)  # QK^T and PV, 2 flops per MAC
  return fwd * (3.5 if backward else 1.0)  # backward = 5 matmuls of that size vs 2 forward


def parse_mask(text: str) -> MaskSpec:
  """'causal' | 'full' | 'window:W' | 'chunk:C' -> MaskSpec."""
  name, _, arg = text.partition(":")
  if name == "causal" and not arg:
    return MaskSpec()
  if name == "full" and not arg:
    return MaskSpec(causal=False)
  if name in ("window", "chunk") and arg.isdigit():
    return MaskSpec(**{name: int(arg)})
  raise SystemExit(f"--masks: cannot parse {text!r}; expected causal, full, window:W or chunk:C")


def parse_kernel_configs(text: str) -> list[dict]:
  """'128,64,4,3;64,64,4,2' -> [dict(block_q, block_k, num_warps, num_stages), ...]."""
  configs = []
  for item in filter(None, text.split(";")):
    try:
      bq, bk, warps, stages = (int(x) for x in item.split(","))
    except ValueError:
      raise SystemExit(f"--kernel_configs: cannot parse {item!r}; expected block_q,block_k,num_warps,"
                       "num_stages") from None
    configs.append(dict(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages))
  return configs


def _fwd_bwd(fn):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _impls(spec: MaskSpec, backend: str, kernel_configs: list[dict], dense_ok: bool, q: jax.Array):
  """name -> fn(q, k, v) for the current backend; dense (T x T) programs only where they fit."""
  impls = {}
  if dense_ok:
    impls["dense reference"] = lambda q, k, v: reference_attention(q, k, v, spec)
  if dense_ok or spec.is_local:  # impl="xla" is dense (T x T) for a global mask
    impls["xla blocked (ours)"] = lambda q, k, v: attention(q, k, v, spec, impl="xla")
  if backend in ("gpu", "tpu"):  # what attention_impl="auto" (the default) runs for this mask
    choice = auto.choose(backend, spec, q_len=q.shape[1], kv_len=q.shape[1], head_dim=q.shape[-1], dtype=q.dtype,
                         explicit_positions=False, segments=False)
    impls[f"auto (= {choice.impl})"] = lambda q, k, v: attention(q, k, v, spec, impl="auto")
  if backend in ("gpu", "tpu"):
    for kc in kernel_configs or [{}]:
      name = "pallas (ours)" + ("" if not kc else " {block_q}x{block_k} w{num_warps} s{num_stages}".format(**kc))
      impls[name] = functools.partial(lambda q, k, v, kc: block_attention(q, k, v, spec, **kc), kc=kc)
  window = None if spec.window is None else (spec.window - 1, 0)
  if backend == "gpu" and spec.chunk is None:  # jax.nn has no block-diagonal (chunk) mask
    impls["jax.nn cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=spec.causal, local_window_size=window, implementation="cudnn")
    if dense_ok:
      impls["jax.nn xla"] = lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=spec.causal, local_window_size=window, implementation="xla")
  if backend == "gpu" and spec.window is None and spec.chunk is None:  # jax's own Pallas GPU kernels
    impls["jax pallas triton mha"] = functools.partial(_jax_triton_mha, spec.causal)
    impls["jax pallas mosaic-gpu"] = functools.partial(_jax_mosaic_gpu, spec.causal)
  if backend == "tpu" and spec.window is not None:
    impls["splash"] = functools.partial(_splash, spec)
  return impls


def _jax_triton_mha(causal, q, k, v):
  from jax.experimental.pallas.ops.gpu import attention as triton_attention
  return triton_attention.mha(q, k, v, None, sm_scale=q.shape[-1]**-0.5, causal=causal)


def _jax_mosaic_gpu(causal, q, k, v):
  # Forward only for causal in this jax (its backward raises NotImplementedError: reported as failed).
  # Its shared-memory staging is float16, so it runs in float16 (same 2-byte traffic and MMA rate).
  from jax.experimental.pallas.ops.gpu import attention_mgpu
  config = attention_mgpu.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2, causal=causal,
                                       block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
  f16 = lambda x: x.astype(jnp.float16)  # noqa: E731
  return attention_mgpu.attention(f16(q * q.shape[-1]**-0.5), f16(k), f16(v), config).astype(q.dtype)


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
  parser.add_argument("--masks", default="", help="comma-separated: causal, full, window:W, chunk:C "
                      "(default window:128 on CPU; causal,window:256,window:2048,chunk:256 elsewhere)")
  parser.add_argument("--window", type=int, default=0, help="shorthand for --masks=window:W")
  parser.add_argument("--batch", type=int, default=0, help="default: tokens // length (at least 1)")
  parser.add_argument("--tokens", type=int, default=0, help="tokens per call (default 4K on CPU, 32K elsewhere)")
  parser.add_argument("--heads", type=int, default=0, help="default 4 on CPU, 16 elsewhere")
  parser.add_argument("--kv_heads", type=int, default=0, help="default: heads")
  parser.add_argument("--head_dim", type=int, default=0, help="default 64 on CPU, 128 elsewhere")
  parser.add_argument("--dtype", default="", help="float32 / bfloat16 (default: f32 on CPU, bf16 else)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--backward", action="store_true", help="also time forward+backward")
  parser.add_argument("--kernel_configs", default="",
                      help="Pallas tilings to time, 'block_q,block_k,num_warps,num_stages;...' "
                      "(default on GPU: 64,64,4,2;64,64,4,3;128,64,8,2;128,128,8,2)")
  parser.add_argument("--dense_max_gib", type=float, default=8.0,
                      help="skip programs that materialise [T, T] logits above this size")
  parser.add_argument("--json", default="", help="also write every row to this file")
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  on_cpu = backend == "cpu"
  lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else (
      [512, 1024, 2048, 4096] if on_cpu else [4096, 16384])
  masks_text = (f"window:{args.window}" if args.window else args.masks) or (
      "window:128" if on_cpu else "causal,window:256,window:2048,chunk:256")
  specs = [parse_mask(m) for m in masks_text.split(",")]
  dtype = jnp.dtype(args.dtype or ("float32" if on_cpu else "bfloat16"))
  heads = args.heads or (4 if on_cpu else 16)
  kv_heads = args.kv_heads or heads
  head_dim = args.head_dim or (64 if on_cpu else 128)
  tokens = args.tokens or (4096 if on_cpu else 32768)
  kernel_configs = parse_kernel_configs(args.kernel_configs or ("" if on_cpu else "64,64,4,2;64,64,4,3;128,64,8,2;128,128,8,2"))
  peak = _peak()
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, dtype {dtype.name}, "
        f"heads {heads}/{kv_heads} kv, head_dim {head_dim}, {tokens} tokens per call unless --batch, "
        f"median of {args.reps}; TFLOP/s counted on unmasked (query, key) pairs"
        + (f", peak {peak} TFLOP/s" if peak else ""), flush=True)
  modes = [("fwd", False)] + ([("fwd+bwd", True)] if args.backward else [])
  header = (f"{'mask':>12} {'T':>6} {'B':>3} {'mode':>7} {'impl':>34} {'ms':>9} {'vs dense':>8} "
            f"{'vs best anchor':>14} {'TFLOP/s':>8}")
  header += f" {'% peak':>7}" if peak else ""
  records = []
  for spec in specs:
    mask_name = ("causal" if spec.causal else "full") if not spec.is_local else (
        f"window:{spec.window}" if spec.window else f"chunk:{spec.chunk}")
    print("\n" + header, flush=True)
    for length in lengths:
      batch = args.batch or max(1, tokens // length)
      dense_ok = batch * heads * length * length * 4 <= args.dense_max_gib * 2**30
      keys = jax.random.split(jax.random.PRNGKey(length), 3)
      q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
      k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
      v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
      for mode, backward in modes:
        times = {}
        for name, fn in _impls(spec, backend, kernel_configs, dense_ok, q).items():
          compiled = _fwd_bwd(fn) if backward else jax.jit(fn)
          try:
            times[name] = statistics.median(wall_times(compiled, q, k, v, repeats=args.reps))
          except Exception as e:  # noqa: BLE001  (an unsupported shape must not kill the whole table)
            print(f"{mask_name:>12} {length:>6} {batch:>3} {mode:>7} {name:>34}  failed: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:100] if str(e) else ''}", flush=True)
        dense = times.get("dense reference")
        anchors = [t for n, t in times.items() if n.startswith(("jax", "splash"))]
        best_anchor = min(anchors) if anchors else None
        flops = attention_flops(spec, batch, heads, head_dim, length, backward)
        for name, sec in times.items():
          tflops = flops / sec / 1e12
          vs_dense = f"{dense / sec:8.2f}" if dense else f"{'-':>8}"
          vs_anchor = f"{best_anchor / sec:14.2f}" if best_anchor else f"{'-':>14}"
          row = (f"{mask_name:>12} {length:>6} {batch:>3} {mode:>7} {name:>34} {sec * 1e3:9.3f} {vs_dense} "
                 f"{vs_anchor} {tflops:8.3g}")
          print(row + (f" {100 * tflops / peak:6.1f}%" if peak else ""), flush=True)
          records.append(dict(mask=mask_name, length=length, batch=batch, mode=mode, impl=name, ms=sec * 1e3,
                              tflops=tflops, peak_fraction=tflops / peak if peak else None))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, dtype=dtype.name, heads=heads,
                     kv_heads=kv_heads, head_dim=head_dim, rows=records), f, indent=1)


if __name__ == "__main__":
  main()
