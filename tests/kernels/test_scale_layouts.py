"""Static block layouts (`MaskSpec.blocks`): VAR/HMAR scale masks that the kernels skip tiles for.

The tile map of HMAR's Markovian mask is checked tile by tile against the paper's rule written out
element by element (a query of scale k sees the keys of scale k only; the window-2 variant also scale
k - 1), and every implementation (Pallas in both interpret flavours, the blocked XLA path, the dense
oracle with omitted positions) against the oracle with explicit scale-id positions, values and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, block_attention, dense_mask, reference_attention, tiling
from hat_jax.kernels.blocked_xla import blocked_attention, blocked_supported, layout_key_ranges
from hat_jax.kernels.masks import layout_positions
from hat_jax.models.hmar import attention_pairs, markov_mask

MNIST_SCALES = (1, 2, 3, 4, 6, 8)  # 130 positions
VAR256_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # 680 positions


def paper_rule(scales, window):
  """[L, L] bool from the definition: query of scale a may see key of scale b iff a - window < b <= a
  (window None: every b <= a, VAR's block-causal mask)."""
  ids = np.repeat(np.arange(len(scales)), [pn * pn for pn in scales])
  a, b = ids[:, None], ids[None, :]
  live = b <= a
  if window is not None:
    live &= b > a - window
  return live


def tile_map(element: np.ndarray, bq: int, bk: int) -> np.ndarray:
  """[n_q_tiles, n_k_tiles]: does the tile hold any live element (padding rows/cols are dead)."""
  t = element.shape[0]
  padded = np.zeros((tiling.round_up(t, bq), tiling.round_up(t, bk)), bool)
  padded[:t, :t] = element
  return padded.reshape(padded.shape[0] // bq, bq, padded.shape[1] // bk, bk).any(axis=(1, 3))


def layout_spec(scales, window):
  return MaskSpec(causal=True, window=window, blocks=tuple(pn * pn for pn in scales))


@pytest.mark.parametrize("scales", [MNIST_SCALES, VAR256_SCALES])
@pytest.mark.parametrize("window", [1, 2, None])
@pytest.mark.parametrize("bq,bk", [(8, 8), (16, 16), (8, 32), (64, 64)])
def test_tile_map_is_the_paper_rule_tile_by_tile(scales, window, bq, bk):
  spec = layout_spec(scales, window)
  want = paper_rule(scales, window)
  t = want.shape[0]
  ids = layout_positions(spec, t)[None]
  np.testing.assert_array_equal(np.asarray(dense_mask(spec, ids, ids)[0]), want)  # element by element
  got = tiling.static_live_tiles(spec, t, t, bq, bk)
  np.testing.assert_array_equal(got, tile_map(want, bq, bk))
  # The kernels walk a contiguous range of key tiles per query tile: it must not add tiles either.
  lo, hi = tiling.tile_ranges(np, got[None])
  walked = np.arange(got.shape[1])[None] >= lo[0][:, None]
  walked &= np.arange(got.shape[1])[None] < hi[0][:, None]
  np.testing.assert_array_equal(walked, got)
  assert want.sum() == attention_pairs(scales, window)
  if window == 1:
    assert spec == markov_mask(scales)


def test_markov_tiles_grow_with_the_scale_pairs_not_the_square():
  """Visited tiles of the 256 px layout (680 positions): HMAR's block-diagonal mask visits far fewer than
  VAR's block-causal mask, at every tile size; the per-tile span (the TPU grid's static extent) is bounded
  by the two largest adjacent scales (a tile straddling them sees both), not by the sequence."""
  t = sum(pn * pn for pn in VAR256_SCALES)
  for block in (16, 64):
    visited = {w: int(tiling.static_live_tiles(layout_spec(VAR256_SCALES, w), t, t, block, block).sum())
               for w in (1, 2, None)}
    dense = (tiling.round_up(t, block) // block) ** 2
    assert visited[1] < visited[2] < visited[None] < dense
    assert visited[1] < 0.6 * visited[None]
    span_q, span_k = tiling.static_spans(layout_spec(VAR256_SCALES, 1), t, t, block, block)
    assert span_q == span_k <= -(-256 // block) + -(-169 // block) + 1 < tiling.round_up(t, block) // block
  # Element pairs: block-diagonal = sum n_k^2, window 2 adds n_k n_{k-1}; VAR about (sum n_k)^2 / 2.
  assert attention_pairs(VAR256_SCALES, 1) == sum(pn ** 4 for pn in VAR256_SCALES)
  pairs2 = sum(pn * pn * (pn * pn + (VAR256_SCALES[k - 1] ** 2 if k else 0)) for k, pn in enumerate(VAR256_SCALES))
  assert attention_pairs(VAR256_SCALES, 2) == pairs2


def test_layout_key_ranges_and_errors():
  spec = layout_spec((1, 2, 3), 1)
  assert layout_key_ranges(spec) == [(0, 1), (1, 5), (5, 14)]
  assert layout_key_ranges(layout_spec((1, 2, 3), 2)) == [(0, 1), (0, 5), (1, 14)]
  assert layout_key_ranges(layout_spec((1, 2, 3), None)) == [(0, 1), (0, 5), (0, 14)]
  with pytest.raises(ValueError, match=r"blocks=\(1, 4, 9\) describes sequences of sum\(blocks\) = 14 positions, "
                                       r"got length 13"):
    layout_positions(spec, 13)
  with pytest.raises(ValueError, match="MaskSpec.blocks must be a non-empty tuple of positive ints"):
    MaskSpec(blocks=(4, 0))
  with pytest.raises(ValueError, match="MaskSpec.blocks must be a non-empty tuple of positive ints"):
    MaskSpec(blocks=(1.5,))
  assert MaskSpec(blocks=[np.int64(1), 4]).blocks == (1, 4)  # hashable tuple of ints
  q = jnp.zeros((1, 13, 1, 8))
  with pytest.raises(ValueError, match="describes sequences of sum"):
    reference_attention(q, q, q, spec)


def _qkv(t, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (2, t, 4, 8))
  k = jax.random.normal(ks[1], (2, t, 2, 8))
  v = jax.random.normal(ks[2], (2, t, 2, 8))
  do = jax.random.normal(ks[3], (2, t, 4, 8))
  return q, k, v, do


def _value_and_grads(fn, q, k, v, do):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(do))


IMPLS = {
    "pallas_gpu_interpret": lambda spec: lambda q, k, v: block_attention(
        q, k, v, spec, backend="gpu", interpret=True, block_q=16, block_k=16),
    "pallas_tpu_interpret": lambda spec: lambda q, k, v: block_attention(
        q, k, v, spec, backend="tpu", interpret=True, block_q=8, block_k=8),
    "blocked_xla": lambda spec: lambda q, k, v: blocked_attention(q, k, v, spec),
    "xla_dispatch": lambda spec: lambda q, k, v: attention(q, k, v, spec, impl="xla"),
    "oracle_omitted_positions": lambda spec: lambda q, k, v: reference_attention(q, k, v, spec),
}


SLOW = pytest.mark.slow  # the TPU simulator steps through every grid point (~25 s a case on 2 cores)


@pytest.mark.parametrize("impl", [pytest.param(i, marks=SLOW) if "tpu" in i else i for i in sorted(IMPLS)])
@pytest.mark.parametrize("window", [1, 2])
def test_implementations_match_the_oracle_with_explicit_scale_ids(impl, window):
  """Values and gradients on the layout (1, 2, 3, 4, 2) = 34 positions: several tiles, padding, skipped
  tiles, a small scale after a large one (tiles straddling scales); GQA 4:2."""
  scales = (1, 2, 3, 4, 2)
  spec = layout_spec(scales, window)
  t = sum(pn * pn for pn in scales)
  q, k, v, do = _qkv(t)
  ids = jnp.broadcast_to(jnp.asarray(layout_positions(spec, t)), (2, t))
  plain = MaskSpec(causal=True, window=window)  # the same rule, positions given explicitly
  want = jax.jit(lambda *a: _value_and_grads(
      lambda q, k, v: reference_attention(q, k, v, plain, q_positions=ids, kv_positions=ids), *a))(q, k, v, do)
  got = jax.jit(lambda *a: _value_and_grads(IMPLS[impl](spec), *a))(q, k, v, do)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5, err_msg=name)


def test_xla_dispatch_takes_the_layout_path_only_for_omitted_positions():
  spec = layout_spec((1, 2, 3), 1)
  q = jnp.zeros((1, 14, 2, 8))
  assert blocked_supported(spec, q, q, None, None)
  assert not blocked_supported(spec, q, q, jnp.zeros((1, 14), jnp.int32), jnp.zeros((1, 14), jnp.int32))
  assert not blocked_supported(MaskSpec(causal=True), q, q, None, None)  # plain causal: dense path as before
