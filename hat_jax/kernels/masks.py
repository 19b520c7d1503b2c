"""Attention masks as data: one static spec plus per-token position/segment arrays.

Every mask the models need is the conjunction of at most four rules, evaluated per (query, key) pair:

  segment   q_segment == kv_segment                     documents in a packed row never see each other;
                                                        segment id 0 marks padding / empty cache slots
                                                        and only ever matches padding queries.
  causal    kv_pos <= q_pos                             ordinary causal attention. With *block ids*
                                                        as positions (e.g. VAR scale index) this is
                                                        block-causal: a token sees its own and all
                                                        earlier blocks.
  window    q_pos - kv_pos < window                     sliding window (HAT encoder/decoder).
  chunk     q_pos // chunk == kv_pos // chunk           block-diagonal (Block Transformer token
                                                        decoder, within-word attention).

Positions are explicit int arrays ([batch, len]) so that the same spec serves training (positions =
arange), KV-cached decoding (query positions offset into the cache) and block-causal masks (positions
= block ids). When positions are omitted they default to arange, which lets kernels reason about the
mask statically and skip fully masked tiles.

Block layouts (`blocks`): a static tuple of block lengths (VAR/HMAR: pn^2 per scale) makes omitted
positions default to the *block ids* of that layout instead of arange (sequence index i of block b has
position b), so block masks over scales are static too and the kernels skip their dead tiles:

  MaskSpec(causal=True, blocks=L)            block-causal (VAR): a scale sees itself and all coarser scales
  MaskSpec(causal=True, window=1, blocks=L)  block-diagonal (HMAR's Markovian mask): a scale sees itself
  MaskSpec(causal=True, window=2, blocks=L)  a scale sees itself and its immediate predecessor

The rules are the same as with explicit block-id positions; only omitted positions change meaning.
"""

from __future__ import annotations

import dataclasses
import operator

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Static part of an attention mask. Hashable, so it can be a jit static argument / module attr."""

  causal: bool = True
  window: int | None = None  # keys with q_pos - kv_pos >= window are masked
  chunk: int | None = None  # keys in another chunk of `chunk` positions are masked
  # Static block layout: lengths of consecutive blocks; omitted positions are then block ids (docstring).
  blocks: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.blocks is not None:
      try:
        blocks = tuple(operator.index(n) for n in self.blocks)
      except TypeError:
        blocks = ()
      if not blocks or min(blocks) < 1:
        raise ValueError(f"MaskSpec.blocks must be a non-empty tuple of positive ints (block lengths), got "
                         f"{self.blocks!r}.")
      object.__setattr__(self, "blocks", blocks)
    if self.window is not None and self.window < 1:
      raise ValueError(f"MaskSpec.window must be a positive int or None, got {self.window}.")
    if self.chunk is not None and self.chunk < 1:
      raise ValueError(f"MaskSpec.chunk must be a positive int or None, got {self.chunk}.")
    if self.window is not None and not self.causal:
      raise ValueError("MaskSpec.window needs causal=True (a sliding window looks backwards only).")

  @property
  def is_local(self) -> bool:
    """True when, with arange positions, each query sees a bounded span of keys (window or chunk)."""
    return self.window is not None or self.chunk is not None


def layout_positions(spec: MaskSpec, length: int) -> np.ndarray:
  """The positions omitted positions stand for, int32 [length] (static): arange, or with `spec.blocks` the
  block id of every sequence index (which needs length == sum(blocks))."""
  if spec.blocks is None:
    return np.arange(length, dtype=np.int32)
  if length != sum(spec.blocks):
    raise ValueError(f"A MaskSpec with blocks={spec.blocks} describes sequences of sum(blocks) = "
                     f"{sum(spec.blocks)} positions, got length {length}. Pass explicit positions (block ids) "
                     f"for a part of the layout, or a spec whose blocks match the sequence.")
  return np.repeat(np.arange(len(spec.blocks), dtype=np.int32), spec.blocks)


def block_starts(spec: MaskSpec) -> np.ndarray:
  """[num_blocks + 1] sequence index where each block of `spec.blocks` starts, then the total length."""
  return np.concatenate([[0], np.cumsum(spec.blocks)]).astype(np.int64)


def default_positions(batch: int, length: int, spec: MaskSpec | None = None) -> jnp.ndarray:
  """[batch, length] int32: arange, or the block ids of `spec.blocks` (`layout_positions`)."""
  ids = layout_positions(spec or MaskSpec(), length)
  return jnp.broadcast_to(jnp.asarray(ids)[None], (batch, length))


def element_mask(spec: MaskSpec, qp, kp, qs=None, ks=None, xp=jnp):
  """The mask rules on broadcastable arrays (query axis before key axis); True = may attend.

  Shared by the dense oracle ([b, q, 1] x [b, 1, k]) and the kernels' tiles ([bq, 1] x [1, bk]) so that
  every implementation evaluates exactly the same predicate. xp=np evaluates it statically (layouts).
  """
  mask = xp.ones(np.broadcast_shapes(qp.shape, kp.shape), dtype=bool)
  if spec.causal:
    mask &= kp <= qp
  if spec.window is not None:
    mask &= (qp - kp) < spec.window
  if spec.chunk is not None:
    mask &= (qp // spec.chunk) == (kp // spec.chunk)
  if qs is not None:
    mask &= qs == ks
  return mask


def dense_mask(
    spec: MaskSpec,
    q_positions: jnp.ndarray,
    kv_positions: jnp.ndarray,
    q_segment_ids: jnp.ndarray | None = None,
    kv_segment_ids: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Boolean mask [batch, q_len, kv_len]; True = may attend."""
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  qs = None if q_segment_ids is None else q_segment_ids[:, :, None]
  ks = None if kv_segment_ids is None else kv_segment_ids[:, None, :]
  return element_mask(spec, q_positions[:, :, None], kv_positions[:, None, :], qs, ks)
