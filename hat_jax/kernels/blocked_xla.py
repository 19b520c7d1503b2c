"""Blocked plain-jnp attention for local masks: cost linear in length for a fixed window or chunk.

Queries are cut into blocks of B; each block attends to the few key blocks its mask can reach (the
previous ceil((window-1)/B) blocks and its own for a window; only its own for a chunk when B is a
multiple of the chunk). Those key blocks are gathered by static slicing, folded into the batch axis and
handed to the dense oracle, so masking semantics (segments, fully masked rows -> 0) are inherited from
`reference_attention` verbatim. Valid only for arange positions, which the caller must guarantee.

A static block layout (`MaskSpec.blocks`, positions = block ids) is cut the same way along its blocks:
each block's queries read only the key blocks its mask reaches (`layout_key_ranges`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.kernels import tiling
from hat_jax.kernels.masks import MaskSpec, block_starts, element_mask, layout_positions
from hat_jax.kernels.reference import check_qkv, reference_attention


def blocked_supported(spec: MaskSpec, q, k, q_positions, kv_positions) -> bool:
  """The blocked path applies to self-attention with default positions and a local mask (window or
  chunk over arange) or a static block layout (`spec.blocks`: positions are the layout's block ids)."""
  return ((spec.is_local or spec.blocks is not None) and q_positions is None and kv_positions is None
          and q.shape[1] == k.shape[1])


def layout_key_ranges(spec: MaskSpec) -> list[tuple[int, int]]:
  """For each block of `spec.blocks`, the sequence range [start, stop) of the keys its mask can reach
  (the blocks j with a live (block, j) pair; contiguous for causal / window / chunk rules on block ids).
  A block that sees nothing gets (0, 0)."""
  n = len(spec.blocks)
  starts = block_starts(spec)
  ids = np.arange(n)
  live = element_mask(spec, ids[:, None], ids[None, :], xp=np)  # [n, n] over block ids
  ranges = []
  for b in range(n):
    seen = np.flatnonzero(live[b])
    if not len(seen):
      ranges.append((0, 0))
      continue
    if seen[-1] - seen[0] + 1 != len(seen):
      raise ValueError(f"Mask {spec}: block {b} sees the non-contiguous blocks {seen.tolist()}.")
    ranges.append((int(starts[seen[0]]), int(starts[seen[-1] + 1])))
  return ranges


def _layout_attention(q, k, v, spec: MaskSpec, q_segment_ids, kv_segment_ids, scale):
  """Block layout: each block's queries against the static key range its mask reaches (dense inside).
  Cost sum_b n_b x |range_b|: for HMAR's block-diagonal mask sum_b n_b^2, for VAR's block-causal mask
  sum_b n_b x (n_1 + ... + n_b), instead of (sum_b n_b)^2."""
  b, t = q.shape[:2]
  ids = jnp.asarray(layout_positions(spec, t))
  starts = block_starts(spec)
  outs = []
  for blk, (lo, hi) in enumerate(layout_key_ranges(spec)):
    qa, qb = int(starts[blk]), int(starts[blk + 1])
    if lo == hi:
      outs.append(jnp.zeros_like(q[:, qa:qb]))
      continue
    seg = lambda s, a, z: None if s is None else s[:, a:z]  # noqa: E731
    outs.append(reference_attention(
        q[:, qa:qb], k[:, lo:hi], v[:, lo:hi], spec, q_positions=jnp.broadcast_to(ids[qa:qb], (b, qb - qa)),
        kv_positions=jnp.broadcast_to(ids[lo:hi], (b, hi - lo)), q_segment_ids=seg(q_segment_ids, qa, qb),
        kv_segment_ids=seg(kv_segment_ids, lo, hi), scale=scale))
  return jnp.concatenate(outs, axis=1)


def block_size(spec: MaskSpec) -> tuple[int, int]:
  """-> (query block size B, number of key blocks each query block reads)."""
  if spec.chunk is not None:
    # Chunk-aligned blocks of >= 16 rows: a query block only ever sees its own key block.
    return spec.chunk * max(1, 16 // spec.chunk), 1
  block = max(16, tiling.round_up(spec.window, 8))
  return block, 1 + -(-(spec.window - 1) // block)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """Same contract as `reference_attention` restricted to `blocked_supported` inputs."""
  check_qkv(q, k, v)
  if not blocked_supported(spec, q, k, None, None):
    raise ValueError(
        f"blocked_attention needs a window or chunk mask or a block layout, and q_len == kv_len, got {spec} "
        f"with q_len={q.shape[1]}, kv_len={k.shape[1]}; use reference_attention for other masks.")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  if spec.blocks is not None:
    return _layout_attention(q, k, v, spec, q_segment_ids, kv_segment_ids, scale)
  b, t, h, d = q.shape
  block, n_kv_blocks = block_size(spec)
  t_pad = tiling.round_up(t, block)
  n = t_pad // block
  halo = (n_kv_blocks - 1) * block  # keys left of position 0, all padding
  if q_segment_ids is None:
    q_segment_ids = kv_segment_ids = jnp.zeros((b, t), jnp.int32)
  qs = tiling.pad_axis(q_segment_ids.astype(jnp.int32), t_pad, 1, tiling.Q_PAD_SEGMENT)
  ks = tiling.pad_axis(kv_segment_ids.astype(jnp.int32), t_pad, 1, tiling.KV_PAD_SEGMENT)
  # Left halo + right padding; halo keys get the pad segment so negative positions never match.
  ks = jnp.pad(ks, ((0, 0), (halo, 0)), constant_values=tiling.KV_PAD_SEGMENT)
  k_full = jnp.pad(tiling.pad_axis(k, t_pad, 1), ((0, 0), (halo, 0), (0, 0), (0, 0)))
  v_full = jnp.pad(tiling.pad_axis(v, t_pad, 1), ((0, 0), (halo, 0), (0, 0), (0, 0)))
  kp = jnp.broadcast_to(jnp.arange(-halo, t_pad, dtype=jnp.int32)[None], (b, halo + t_pad))

  def windows(x):
    """[b, halo + t_pad, ...] -> [b * n, n_kv_blocks * block, ...]: key blocks seen by each q block."""
    views = [x[:, s * block:s * block + t_pad].reshape(b, n, block, *x.shape[2:])
             for s in range(n_kv_blocks)]
    return jnp.concatenate(views, axis=2).reshape(b * n, n_kv_blocks * block, *x.shape[2:])

  qp = jnp.broadcast_to(jnp.arange(t_pad, dtype=jnp.int32)[None], (b, t_pad))
  out = reference_attention(
      tiling.pad_axis(q, t_pad, 1).reshape(b * n, block, h, d), windows(k_full), windows(v_full), spec,
      q_positions=qp.reshape(b * n, block), kv_positions=windows(kp),
      q_segment_ids=qs.reshape(b * n, block), kv_segment_ids=windows(ks), scale=scale)
  return out.reshape(b, t_pad, h, d)[:, :t]
