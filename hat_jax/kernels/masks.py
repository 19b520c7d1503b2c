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
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Static part of an attention mask. Hashable, so it can be a jit static argument / module attr."""

  causal: bool = True
  window: int | None = None  # keys with q_pos - kv_pos >= window are masked
  chunk: int | None = None  # keys in another chunk of `chunk` positions are masked

  def __post_init__(self):
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


def default_positions(batch: int, length: int) -> jnp.ndarray:
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (batch, length))


def element_mask(spec: MaskSpec, qp, kp, qs=None, ks=None):
  """The mask rules on broadcastable arrays (query axis before key axis); True = may attend.

  Shared by the dense oracle ([b, q, 1] x [b, 1, k]) and the kernels' tiles ([bq, 1] x [1, bk]) so that
  every implementation evaluates exactly the same predicate.
  """
  mask = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), dtype=bool)
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
