"""Compiled (not interpreted) Pallas GPU kernels vs the float32 oracle: values and gradients.

Run on a GPU machine with `JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu tests/kernels`; skipped
cleanly elsewhere. The interpreter does not check what the Triton lowering requires (power-of-two
tiles, dot operands of at least 16 x 16, strided in-place line blocks), so these cases are the ones a
real compile can break: every mask of tests/kernels/test_attention.py, lengths that are not a multiple
of the tile, GQA, bf16 and float32, head dims that need padding, and the axial kernel on both axes.
The oracle runs on the CPU in float32: on the GPU both XLA and Triton may use TF32 for float32 dots.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, auto, axial_reference, block_attention, reference_attention
from hat_jax.kernels.axial import axial_pallas
from tests.kernels.test_attention import _case, _qkv

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (compiled Pallas kernels)")]

# float32 dots run as TF32 on tensor cores (10-bit mantissa); bf16 has 8 bits.
TOL = {jnp.float32: 5e-3, jnp.bfloat16: 3e-2}


def _vjp(fn, *args):
  out, vjp = jax.vjp(fn, *args[:-1])
  return (out,) + vjp(args[-1])


def _on_cpu_f32(fn, *args):
  cpu = jax.devices("cpu")[0]
  args = [jax.device_put(np.asarray(x, np.float32), cpu) for x in args]
  with jax.default_device(cpu):
    return jax.jit(lambda *a: _vjp(fn, *a))(*args)


def _assert_all_close(got, want, dtype):
  for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
    assert g.dtype == dtype, name
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert np.all(np.isfinite(g)), f"{name}: non-finite values"
    err = np.max(np.abs(g - w)) / max(1.0, np.max(np.abs(w)))
    assert err <= TOL[dtype], f"{name}: max relative error {err:.2e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("name", ["causal_gqa2", "window_segments", "chunk_bf16_gqa4", "block_causal_scale_ids",
                                  "kv_cache_decode", "full_noncausal"])
@pytest.mark.parametrize("tiles", [(16, 16), (None, None)])
def test_block_attention_masks(name, tiles):
  spec, (b, tq, tk, h, hk, dtype), kw = _case(name)
  q, k, v, do = _qkv(b, tq, tk, h, hk, 24, dtype)  # head_dim 24: padded to 32 inside
  fn = functools.partial(block_attention, spec=spec, backend="gpu", interpret=False, block_q=tiles[0],
                         block_k=tiles[1], **kw)
  got = jax.jit(lambda *a: _vjp(lambda q, k, v: fn(q, k, v), *a))(q, k, v, do)
  ref = functools.partial(reference_attention, spec=spec, **{n: np.asarray(x) for n, x in kw.items()})
  _assert_all_close(got, _on_cpu_f32(lambda q, k, v: ref(q, k, v), q, k, v, do), dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("spec,t,warps,stages", [
    (MaskSpec(window=128), 300, 4, 2),
    (MaskSpec(), 1000, 8, 3),
    (MaskSpec(chunk=64), 515, 4, 3),
])
def test_block_attention_long_rows(dtype, spec, t, warps, stages):
  q, k, v, do = _qkv(2, t, t, 8, 2, 64, dtype)
  fn = functools.partial(block_attention, spec=spec, backend="gpu", interpret=False, num_warps=warps,
                         num_stages=stages)
  got = jax.jit(lambda *a: _vjp(fn, *a))(q, k, v, do)
  _assert_all_close(got, _on_cpu_f32(functools.partial(reference_attention, spec=spec), q, k, v, do), dtype)


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,hk", [(jnp.float32, 4), (jnp.bfloat16, 2)])
def test_axial_in_place(axis, causal, dtype, hk):
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(axis), 4)
  shape_q, shape_kv = (2, 16, 32, 4, 32), (2, 16, 32, hk, 32)
  q, do = (jax.random.normal(r, shape_q).astype(dtype) for r in (kq, kg))
  k, v = (jax.random.normal(r, shape_kv).astype(dtype) for r in (kk, kv))
  got = jax.jit(lambda *a: _vjp(lambda q, k, v: axial_pallas(q, k, v, axis, causal, interpret=False), *a))(
      q, k, v, do)
  want = _on_cpu_f32(lambda q, k, v: axial_reference(q, k, v, axis, causal), q, k, v, do)
  _assert_all_close(got, want, dtype)


# ------------------------------------------------------------------ attention_impl="auto": cuDNN


@pytest.mark.parametrize("spec", [MaskSpec(), MaskSpec(window=48), MaskSpec(causal=False)])
def test_auto_cudnn_equals_reference(spec):
  """auto on a GPU runs cuDNN for these masks in bf16 without segment ids."""
  t = 256
  q, k, v, do = _qkv(2, t, t, 8, 2, 64, jnp.bfloat16)
  choice = auto.choose("gpu", spec, q_len=t, kv_len=t, head_dim=64, dtype=jnp.bfloat16, explicit_positions=False,
                       segments=False)
  assert choice.impl == "cudnn"
  got = jax.jit(lambda *a: _vjp(lambda q, k, v: attention(q, k, v, spec, impl="auto"), *a))(q, k, v, do)
  want = _on_cpu_f32(functools.partial(reference_attention, spec=spec), q, k, v, do)
  _assert_all_close(got, want, jnp.bfloat16)
