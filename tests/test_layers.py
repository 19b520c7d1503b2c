import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.kernels import MaskSpec, dense_mask
from hat_jax.models import layers as layers_lib
from hat_jax.models.layers import KVCache, StackConfig, Stack, apply_rope, caches_length, empty_caches, stack_mask
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


# -- scan and remat: how the layers run, not what they compute -------------------------------------------


def _stack_and_params(scan=False, remat="none", window=3):
  cfg = StackConfig(d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, window=window,
                    scan=scan, remat=remat)
  stack = Stack(cfg, stack_mask(cfg))
  x, pos, seg = _inputs()
  return cfg, stack, jit_helpers.init(stack, jax.random.key(0), x, positions=pos, segment_ids=seg)


def _loss_and_grads(stack, params):
  x, pos, seg = _inputs()

  def loss(p, x):
    out, _ = stack.apply(p, x, positions=pos, segment_ids=seg)
    return jnp.sum(out * jnp.sin(out))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)


def test_scanned_stack_equals_unrolled_values_grads_and_caches():
  _, unrolled, params = _stack_and_params()
  cfg, scanned, scanned_params = _stack_and_params(scan=True)
  assert "layers" in scanned_params["params"] and "layer_0" not in scanned_params["params"]
  kernel = scanned_params["params"]["layers"]["attn"]["q_proj"]["kernel"]
  assert kernel.value.shape[0] == 3 and kernel.names[0] == "layers"  # leading layer axis, logical name "layers"
  converted = layers_lib.scan_layer_params(nn.unbox(params))
  assert jax.tree.structure(converted) == jax.tree.structure(nn.unbox(scanned_params))
  (loss, (g_params, g_x)) = _loss_and_grads(unrolled, params)
  (s_loss, (s_params, s_x)) = _loss_and_grads(scanned, converted)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(s_x, g_x, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(layers_lib.unscan_layer_params(s_params)), jax.tree.leaves(nn.unbox(g_params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Cached decoding through the scanned stack: one KVCache with a leading [layers] dim.
  x, pos, seg = _inputs()
  caches = empty_caches(cfg, 2, 16)
  assert isinstance(caches, KVCache) and caches.k.shape == (3, 2, 2, 16, 8)
  step = jax.jit(lambda p, x, pos, seg, c: scanned.apply(p, x, positions=pos, segment_ids=seg, caches=c))
  out, caches = step(converted, x[:, :6], pos[:, :6], seg[:, :6], caches)
  outs = [out]
  for t in range(6, 10):
    out, caches = step(converted, x[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1], caches)
    outs.append(out)
  full, _ = jit_helpers.apply(unrolled, params, x, positions=pos, segment_ids=seg)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert caches_length(caches).tolist() == [10, 10]


@pytest.mark.parametrize("remat, scan", [("full", True), ("save_dots", False), ("save_dots_no_batch", True)])
def test_remat_policies_change_nothing_but_memory(remat, scan):
  _, plain, params = _stack_and_params(scan=scan)
  _, rematted, _ = _stack_and_params(scan=scan, remat=remat)
  (loss, grads) = _loss_and_grads(plain, params)
  (r_loss, r_grads) = _loss_and_grads(rematted, params)
  np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(r_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The backward pass of "full" holds no saved activation of the layers: its jaxpr has the remat.
  x, pos, seg = _inputs()
  text = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rematted.apply(p, x, positions=pos, segment_ids=seg)[0])))(
      params))
  assert "remat" in text or "checkpoint" in text


def test_bad_remat_and_mismatched_caches_are_clear_errors():
  with pytest.raises(ValueError, match=r"remat must be one of \['full', 'none', 'save_dots'"):
    StackConfig(d_model=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, mlp_dim=8, remat="some")
  cfg, scanned, params = _stack_and_params(scan=True)
  x, pos, seg = _inputs()
  unrolled_caches = empty_caches(dataclasses.replace(cfg, scan=False), 2, 16)
  with pytest.raises(ValueError, match=r"a scanned stack got caches as a tuple.*empty_caches"):
    scanned.apply(params, x, positions=pos, segment_ids=seg, caches=unrolled_caches)
  with pytest.raises(ValueError, match=r"stack of 3 layers got caches for 2 layers"):
    scanned.apply(params, x, positions=pos, segment_ids=seg,
                  caches=empty_caches(dataclasses.replace(cfg, num_layers=2), 2, 16))
