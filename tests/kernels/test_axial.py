"""Axial attention: every implementation vs the 5-D einsum oracle, values and gradients, both axes."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.kernels import axial_attention, axial_reference
from hat_jax.kernels.axial import axial_pallas

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _inputs(shape_q, hk, dtype):
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(0), 4)
  shape_kv = shape_q[:3] + (hk, shape_q[4])
  q = jax.random.normal(kq, shape_q).astype(dtype)
  do = jax.random.normal(kg, shape_q).astype(dtype)
  return q, jax.random.normal(kk, shape_kv).astype(dtype), jax.random.normal(kv, shape_kv).astype(dtype), do


def _vjp(fn, q, k, v, do):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(do)


def _check(fn, axis, causal, dtype, shape=(1, 5, 7, 4, 8), hk=2):
  q, k, v, do = _inputs(shape, hk, dtype)
  got = jax.jit(lambda *a: _vjp(lambda q, k, v: fn(q, k, v, axis, causal), *a))(q, k, v, do)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  want = jax.jit(lambda *a: _vjp(lambda q, k, v: axial_reference(q, k, v, axis, causal), *a))(*f32)
  for name, g, w in zip(["out", "dq", "dk", "dv"], got, want):
    assert g.dtype == dtype, name
    g, w = np.asarray(g, np.float32), np.asarray(w)
    err = np.max(np.abs(g - w)) / max(1.0, np.max(np.abs(w)))
    assert np.all(np.isfinite(g)) and err <= TOL[dtype], f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_pallas_in_place_kernel(axis, causal):
  _check(axial_pallas, axis, causal, jnp.float32)


def test_pallas_in_place_kernel_bf16():
  _check(axial_pallas, -4, True, jnp.bfloat16)


@pytest.mark.parametrize("axis", [1, 2])
def test_xla_folded(axis):
  _check(functools.partial(axial_attention, impl="xla"), axis, True, jnp.float32)


def test_reference_matches_folded_1d_reference():
  # Row attention on [1, 1, W] is plain causal attention over W: ties the 5-D oracle to the 1-D one.
  from hat_jax.kernels import MaskSpec, reference_attention
  q, k, v, _ = _inputs((1, 1, 9, 2, 8), 1, jnp.float32)
  want = reference_attention(q[:, 0], k[:, 0], v[:, 0], MaskSpec(causal=True))
  np.testing.assert_allclose(axial_reference(q, k, v, 2, True)[:, 0], want, atol=1e-6)


def test_errors_are_explicit():
  q, k, v, _ = _inputs((1, 2, 3, 2, 8), 1, jnp.float32)
  with pytest.raises(ValueError, match="axis must be 1"):
    axial_attention(q, k, v, axis=3)
  with pytest.raises(ValueError, match="impl must be one of"):
    axial_attention(q, k, v, axis=1, impl="cuda")
  with pytest.raises(ValueError, match="expects q"):
    axial_attention(q[0], k, v, axis=1)
