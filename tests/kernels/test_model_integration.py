"""The models' attention_impl switch: a layer stack gives the same outputs (and gradients) with "pallas"."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.models.layers import Stack, StackConfig, stack_mask
from tests import jit_helpers

CFG = StackConfig(d_model=16, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=32, window=3)


def _setup():
  x = jax.random.normal(jax.random.key(0), (1, 11, 16))
  pos = jnp.arange(11)[None]
  seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 2])  # two documents, then padding
  params = jit_helpers.init(Stack(CFG, stack_mask(CFG)), jax.random.key(1), x, positions=pos, segment_ids=seg)

  def loss(impl, params, x):
    out, _ = Stack(CFG, stack_mask(CFG), impl).apply(params, x, positions=pos, segment_ids=seg)
    return jnp.sum(out**2), out
  return params, x, loss


def test_stack_pallas_equals_xla_forward():
  params, x, loss = _setup()
  run = lambda impl: jax.jit(lambda p, x: loss(impl, p, x)[1])(params, x)  # noqa: E731
  np.testing.assert_allclose(run("pallas"), run("xla"), atol=1e-5)


@pytest.mark.slow
def test_stack_pallas_equals_xla_gradients():
  params, x, loss = _setup()
  grads = {impl: jax.jit(jax.grad(lambda p, x, impl=impl: loss(impl, p, x)[0], argnums=(0, 1)))(params, x)
           for impl in ("xla", "pallas")}
  for a, b in zip(jax.tree.leaves(grads["pallas"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(a, b, atol=1e-4)
