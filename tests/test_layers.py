import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.kernels import MaskSpec, dense_mask
from hat_jax.models.layers import KVCache, StackConfig, Stack, apply_rope, empty_caches, stack_mask
from tests import jit_helpers


def _inputs(batch=2, length=10, d=32, seed=1):
  x = jax.random.normal(jax.random.key(seed), (batch, length, d))
  pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return x, pos, jnp.ones((batch, length), jnp.int32)


@pytest.mark.parametrize("window", [None, 3])
def test_cached_decoding_equals_full_forward(window):
  cfg = StackConfig(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, window=window)
  stack = Stack(cfg, stack_mask(cfg))
  x, pos, seg = _inputs()
  params = jit_helpers.init(stack, jax.random.key(0), x, positions=pos, segment_ids=seg)
  full, _ = stack.apply(params, x, positions=pos, segment_ids=seg)
  caches = empty_caches(cfg, 2, 16)
  out, caches = stack.apply(params, x[:, :6], positions=pos[:, :6], segment_ids=seg[:, :6], caches=caches)
  outs = [out]
  for t in range(6, 10):
    out, caches = stack.apply(params, x[:, t:t + 1], positions=pos[:, t:t + 1], segment_ids=seg[:, t:t + 1],
                              caches=caches)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert caches[0].length.tolist() == [10, 10]


def test_documents_do_not_attend_across_segments():
  cfg = StackConfig(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=32)
  stack = Stack(cfg, stack_mask(cfg))
  x, pos, _ = _inputs(batch=1, length=8)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  params = jit_helpers.init(stack, jax.random.key(0), x, positions=pos, segment_ids=seg)
  out, _ = stack.apply(params, x, positions=pos, segment_ids=seg)
  # Changing document 1 must not change document 2's outputs.
  x2 = x.at[:, :3].set(0.0)
  out2, _ = stack.apply(params, x2, positions=pos, segment_ids=seg)
  np.testing.assert_allclose(out[:, 3:], out2[:, 3:], atol=1e-6)
  assert not np.allclose(out[:, :3], out2[:, :3])


def test_dense_mask_rules():
  pos = jnp.arange(6)[None]
  m = dense_mask(MaskSpec(causal=True, window=2), pos, pos)[0]
  assert m[3].tolist() == [False, False, True, True, False, False]
  m = dense_mask(MaskSpec(causal=True, chunk=3), pos, pos)[0]
  assert m[4].tolist() == [False, False, False, True, True, False]
  scales = jnp.array([[0, 1, 1, 2, 2, 2]])  # block-causal: positions are block ids
  m = dense_mask(MaskSpec(causal=True), scales, scales)[0]
  assert m[1].tolist() == [True, True, True, False, False, False]


def test_rope_is_relative():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  def score(pq, pk):
    return jnp.sum(apply_rope(q, jnp.array([[pq]]), 1e4) * apply_rope(k, jnp.array([[pk]]), 1e4))
  np.testing.assert_allclose(score(5, 2), score(13, 10), rtol=1e-4)


@pytest.mark.parametrize("bad", [dict(num_heads=3, num_kv_heads=2), dict(head_dim=7), dict(num_layers=0)])
def test_bad_stack_config_raises(bad):
  base = dict(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=32)
  with pytest.raises(ValueError):
    StackConfig(**(base | bad))


def test_kv_cache_skips_padding_entries():
  cache = KVCache.empty(1, 4, 1, 2)
  k = jnp.ones((1, 2, 1, 2))
  cache = cache.append(k, k, jnp.array([[0, 1]]), jnp.array([[1, 0]]))
  assert int(cache.length[0]) == 1


def test_kv_cache_is_head_major_and_writes_at_each_rows_length():
  cache = KVCache.empty(2, 5, 3, 4)  # batch 2, 5 slots, 3 kv heads, head_dim 4
  assert cache.k.shape == cache.v.shape == (2, 3, 5, 4)
  cache = cache._replace(length=jnp.array([0, 2]))
  k = jax.random.normal(jax.random.key(0), (2, 2, 3, 4))  # [batch, t, kv_heads, head_dim]
  cache = cache.append(k, -k, jnp.array([[0, 1], [2, 3]]), jnp.ones((2, 2), jnp.int32))
  np.testing.assert_array_equal(cache.k[0, :, 0:2], jnp.swapaxes(k[0], 0, 1))
  np.testing.assert_array_equal(cache.k[1, :, 2:4], jnp.swapaxes(k[1], 0, 1))
  np.testing.assert_array_equal(cache.v[1, :, 2:4], -jnp.swapaxes(k[1], 0, 1))
  np.testing.assert_array_equal(cache.k[1, :, 0:2], 0.0)  # row 1's earlier slots untouched
  np.testing.assert_array_equal(cache.positions, [[0, 1, 0, 0, 0], [0, 0, 2, 3, 0]])
  np.testing.assert_array_equal(cache.length, [2, 4])
