"""Pallas kernels on a mesh (`hat_jax.kernels.sharded`), on the 8 forced CPU devices.

Under a multi-device mesh every kernel call runs per device inside `jax.shard_map`; these tests check
values and all three gradients against the one-device dense oracle for the meshes the trainer builds
(data, fsdp, tensor, mixed), GQA layouts whose kv heads do and do not divide the tensor axis, batches
that do not divide the batch shards, and the clear error for a sharded sequence axis. The same code
compiled for a real TPU topology (Mosaic) is tests/test_aot.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from hat_jax import sharding
from hat_jax.kernels import MaskSpec, attention, axial_attention, axial_reference, reference_attention
from hat_jax.kernels.sharded import kernel_platform

RULES = sharding.logical_rules(common.default_rules())


def _mesh(data, fsdp, tensor):
  return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor))


def _value_and_grads(fn, *args):
  def loss(*a):
    out = fn(*a)
    return jnp.sum(out * jnp.cos(out)), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
  return out, grads


def _assert_all_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5)


def _qkv(batch, length, heads, kv_heads, d=16, seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=(batch, length, h, d)), jnp.float32) for h in (heads, kv_heads, kv_heads))


@pytest.mark.parametrize("mesh, heads, kv_heads, batch", [
    ((2, 2, 2), 4, 2, 4),  # kv heads split with the query heads
    ((1, 2, 4), 4, 1, 4),  # one kv head, 4 tensor shards: each shard slices its group's kv head
    ((2, 1, 4), 8, 2, 4),  # 2 query heads per shard, both in one group
    ((1, 2, 4), 6, 3, 4),  # 6 heads do not divide tensor=4: heads stay whole, batch still split
    ((8, 1, 1), 2, 1, 2),  # batch 2 over 8 batch shards: the longest dividing prefix (none) -> replicated
], ids=["split_kv", "one_kv_head", "group_per_shard", "heads_indivisible", "batch_indivisible"])
def test_pallas_attention_under_mesh_equals_one_device_reference(mesh, heads, kv_heads, batch):
  q, k, v = _qkv(batch, 32, heads, kv_heads)
  seg = jnp.asarray(np.repeat([[1] * 20 + [2] * 12], batch, 0), jnp.int32)
  spec = MaskSpec(causal=True, window=8)
  want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, spec, q_segment_ids=seg, kv_segment_ids=seg),
                          q, k, v)
  with sharding.use_mesh(_mesh(*mesh), RULES):
    fn = lambda q, k, v: attention(q, k, v, spec, impl="pallas", q_segment_ids=seg, kv_segment_ids=seg)  # noqa: E731
    got = _value_and_grads(fn, q, k, v)
    hlo = jax.jit(fn).lower(q, k, v).as_text()
  assert "shard_map" in hlo or "manual" in hlo.lower()  # the kernel runs per device
  _assert_all_close(got, want)


def test_pallas_attention_with_explicit_positions_under_mesh():
  q, k, v = _qkv(4, 24, 4, 2, seed=1)
  pos = jnp.asarray(np.repeat(np.arange(24)[None] // 3, 4, 0), jnp.int32)  # block ids: VAR-style block-causal
  want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, MaskSpec(), q_positions=pos, kv_positions=pos),
                          q, k, v)
  with sharding.use_mesh(_mesh(2, 2, 2), RULES):
    got = _value_and_grads(lambda q, k, v: attention(q, k, v, MaskSpec(), impl="pallas", q_positions=pos,
                                                     kv_positions=pos), q, k, v)
  _assert_all_close(got, want)


def test_axial_pallas_under_mesh_equals_reference():
  r = np.random.default_rng(2)
  q, k, v = (jnp.asarray(r.normal(size=(4, 8, 8, h, 16)), jnp.float32) for h in (4, 2, 2))
  want = _value_and_grads(lambda q, k, v: axial_reference(q, k, v, axis=1, causal=True), q, k, v)
  with sharding.use_mesh(_mesh(2, 2, 2), RULES):
    got = _value_and_grads(lambda q, k, v: axial_attention(q, k, v, axis=1, causal=True, impl="pallas"), q, k, v)
  _assert_all_close(got, want)


def test_sequence_sharding_rule_is_a_clear_error():
  rules = sharding.logical_rules(common.default_rules(("length", "tensor")))
  q, k, v = _qkv(4, 16, 2, 2)
  with sharding.use_mesh(_mesh(2, 2, 2), rules):
    with pytest.raises(ValueError, match=r"map 'length' to mesh axes \['tensor'\].*sequence parallelism is not "
                                         r"implemented.*Map 'length' to None"):
      attention(q, k, v, MaskSpec(), impl="pallas")
  with sharding.use_mesh(_mesh(2, 4, 1), rules):  # a size-1 axis shards nothing: fine
    attention(q, k, v, MaskSpec(), impl="pallas")


def test_kernel_platform_follows_the_mesh_in_context():
  assert kernel_platform() == jax.default_backend()
  with sharding.use_mesh(_mesh(2, 2, 2), RULES):
    assert kernel_platform() == "cpu"
