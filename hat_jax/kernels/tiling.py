"""Padding and tile bookkeeping shared by the blocked XLA path and the Pallas kernels.

A kernel works on tiles of `block_q` queries x `block_k` keys. For each query tile we compute the
contiguous range [lo, hi) of key tiles that may hold a live (unmasked) entry, from per-tile min/max of
positions and segment ids; everything outside the range is skipped, everything inside is masked
element-wise, except (GPU schedule) a run [flo, fhi) of tiles that are entirely live, which skip the
mask arithmetic. The bounds are conservative (never skip a live tile), so arbitrary position arrays
(KV-cache offsets, VAR scale ids) stay correct: they merely skip fewer tiles.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from hat_jax.kernels.masks import MaskSpec, layout_positions

# Segment ids given to padded rows. Real segment ids are >= 0 (0 = padding by the models' convention,
# which must still match other 0s), so these sentinels never match a real id nor each other.
KV_PAD_SEGMENT = np.iinfo(np.int32).min
Q_PAD_SEGMENT = np.iinfo(np.int32).min + 1
_BIG = np.iinfo(np.int32).max
_SMALL = np.iinfo(np.int32).min


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_axis(x, length: int, axis: int, value=0):
  """Pads `axis` of x at the end up to `length` with `value`."""
  extra = length - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _tile_minmax(xp, x, valid, block):
  """x, valid: [batch, n * block] -> (min, max) over each tile of valid entries, each [batch, n]."""
  b = x.shape[0]
  x = x.reshape(b, -1, block)
  valid = valid.reshape(b, -1, block)
  return (xp.min(xp.where(valid, x, _BIG), axis=-1),
          xp.max(xp.where(valid, x, _SMALL), axis=-1))


def _pair_minmax(xp, qpos, kpos, q_valid, k_valid, block_q, block_k):
  """Per-tile position extremes, shaped to broadcast over (query tile, key tile) pairs:
  qmin/qmax [batch, n_q_tiles, 1], kmin/kmax [batch, 1, n_k_tiles]."""
  qmin, qmax = _tile_minmax(xp, qpos, q_valid, block_q)
  kmin, kmax = _tile_minmax(xp, kpos, k_valid, block_k)
  return qmin[:, :, None], qmax[:, :, None], kmin[:, None, :], kmax[:, None, :]


def live_tiles(xp, spec: MaskSpec, qpos, kpos, qseg, kseg, q_valid, k_valid, block_q, block_k):
  """[batch, n_q_tiles, n_k_tiles] bool: the tile may contain an unmasked entry (conservative).

  All inputs are [batch, padded_len]; xp is numpy (static analysis) or jax.numpy (runtime).
  """
  qmin, qmax, kmin, kmax = _pair_minmax(xp, qpos, kpos, q_valid, k_valid, block_q, block_k)
  live = (xp.any(q_valid.reshape(qpos.shape[0], -1, block_q), -1)[:, :, None]
          & xp.any(k_valid.reshape(kpos.shape[0], -1, block_k), -1)[:, None, :])
  # Int arithmetic below may wrap on the sentinel values of empty tiles; those tiles are already dead.
  if spec.causal:
    live &= kmin <= qmax
  if spec.window is not None:
    live &= qmin - kmax < spec.window
  if spec.chunk is not None:
    c = spec.chunk
    live &= (qmin // c <= kmax // c) & (kmin // c <= qmax // c)
  if qseg is not None:
    qsmin, qsmax, ksmin, ksmax = _pair_minmax(xp, qseg, kseg, q_valid, k_valid, block_q, block_k)
    live &= (qsmin <= ksmax) & (ksmin <= qsmax)
  return live


def full_tiles(xp, spec: MaskSpec, qpos, kpos, qseg, kseg, q_valid, k_valid, block_q, block_k):
  """[batch, n_q_tiles, n_k_tiles] bool: every pair in the tile is real (no padding) and unmasked, so a
  kernel may skip the element-wise mask there (exact: each rule holds for all pairs iff it holds for
  the extreme ones, whatever the order of the positions)."""
  b = qpos.shape[0]
  qmin, qmax, kmin, kmax = _pair_minmax(xp, qpos, kpos, q_valid, k_valid, block_q, block_k)
  full = (xp.all(q_valid.reshape(b, -1, block_q), -1)[:, :, None]
          & xp.all(k_valid.reshape(b, -1, block_k), -1)[:, None, :])
  if spec.causal:
    full &= kmax <= qmin
  if spec.window is not None:
    full &= qmax - kmin < spec.window
  if spec.chunk is not None:
    c = spec.chunk
    full &= (qmin // c == qmax // c) & (kmin // c == kmax // c) & (qmin // c == kmin // c)
  if qseg is not None:
    qsmin, qsmax, ksmin, ksmax = _pair_minmax(xp, qseg, kseg, q_valid, k_valid, block_q, block_k)
    full &= (qsmin == qsmax) & (ksmin == ksmax) & (qsmin == ksmin)
  return full


def full_ranges(xp, full, hi):
  """full [batch, n_rows, n_cols], hi [batch, n_rows] -> (flo, fhi): the first run of consecutive full
  cols of each row, so a kernel walks [lo, flo) masked, [flo, fhi) unmasked, [fhi, hi) masked.
  Rows without a full tile get flo = fhi = hi (everything masked)."""
  n = full.shape[-1]
  any_full = xp.any(full, axis=-1)
  flo = xp.argmax(full, axis=-1)
  after = np.arange(n) >= flo[..., None]
  fhi = xp.sum(xp.cumprod(xp.where(after, full, True).astype(np.int32), axis=-1), axis=-1)  # flo + run
  return (xp.where(any_full, flo, hi).astype(np.int32), xp.where(any_full, fhi, hi).astype(np.int32))


def tile_ranges(xp, live):
  """live [batch, n_rows, n_cols] -> (lo, hi) int32 [batch, n_rows]: smallest range holding the live cols.

  Rows with no live tile get lo = hi = 0 (the kernel then does no work and writes zeros).
  """
  n = live.shape[-1]
  any_live = xp.any(live, axis=-1)
  lo = xp.argmax(live, axis=-1)
  hi = n - xp.argmax(live[..., ::-1], axis=-1)
  lo = xp.where(any_live, lo, 0).astype(np.int32)
  hi = xp.where(any_live, hi, 0).astype(np.int32)
  return lo, hi


def static_positions(spec: MaskSpec, length: int, block: int) -> np.ndarray:
  """[1, round_up(length, block)] the default positions (`masks.layout_positions`: arange, or block ids
  of `spec.blocks`), padded with zeros (padding rows are invalid, their value unused)."""
  ids = layout_positions(spec, length)
  return np.pad(ids, (0, round_up(length, block) - length))[None]


def static_live_tiles(spec: MaskSpec, q_len: int, kv_len: int, block_q: int, block_k: int) -> np.ndarray:
  """[n_q_tiles, n_k_tiles] bool: the tile map of the default positions (static, numpy)."""
  qp, kp = static_positions(spec, q_len, block_q), static_positions(spec, kv_len, block_k)
  qi, ki = np.arange(qp.shape[1])[None], np.arange(kp.shape[1])[None]
  return live_tiles(np, spec, qp, kp, None, None, qi < q_len, ki < kv_len, block_q, block_k)[0]


def static_spans(spec: MaskSpec, q_len: int, kv_len: int, block_q: int, block_k: int) -> tuple[int, int]:
  """Max number of key tiles per query tile and of query tiles per key tile, for default positions
  (arange, or the block ids of `spec.blocks`).

  Segment ids can only shrink these ranges, so they bound the runtime ranges whenever positions are the
  defaults; that is what makes the kernel grid (and cost) linear in length for a fixed window, and
  proportional to the live scale pairs for a block layout.
  """
  live = static_live_tiles(spec, q_len, kv_len, block_q, block_k)[None]
  q_lo, q_hi = tile_ranges(np, live)
  k_lo, k_hi = tile_ranges(np, np.swapaxes(live, 1, 2))
  return max(int(np.max(q_hi - q_lo)), 1), max(int(np.max(k_hi - k_lo)), 1)
