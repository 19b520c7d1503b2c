"""Plain-jnp dense attention: the oracle every kernel is tested against.

Layout (all kernels in this package): q [batch, q_len, num_heads, head_dim],
k/v [batch, kv_len, num_kv_heads, head_dim], num_heads % num_kv_heads == 0 (GQA).
Softmax runs in float32; fully masked query rows return zeros (never NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hat_jax.kernels.masks import MaskSpec, default_positions, dense_mask


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "attention expects q [batch, q_len, heads, head_dim] and k/v [batch, kv_len, kv_heads, head_dim]; "
        f"got q{q.shape} k{k.shape} v{v.shape}.")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got k{k.shape} v{v.shape}.")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q and k disagree on batch or head_dim: q{q.shape} k{k.shape}.")
  if q.shape[2] % k.shape[2]:
    raise ValueError(
        f"num_heads ({q.shape[2]}) must be a multiple of num_kv_heads ({k.shape[2]}) for grouped-query attention.")


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec = MaskSpec(),
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """Dense masked softmax attention. Returns [batch, q_len, num_heads, head_dim] in q.dtype."""
  check_qkv(q, k, v)
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  if q_positions is None:
    q_positions = default_positions(batch, q_len)
  if kv_positions is None:
    kv_positions = default_positions(batch, kv_len)
  scale = head_dim**-0.5 if scale is None else scale
  groups = num_heads // num_kv_heads
  # [batch, q_len, kv_heads, groups, head_dim]: each kv head serves `groups` query heads.
  q_grouped = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k, preferred_element_type=jnp.float32) * scale
  mask = dense_mask(spec, q_positions, kv_positions, q_segment_ids, kv_segment_ids)  # [b, q, k]
  mask = mask[:, None, None]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom == 0.0, 1.0, denom)  # fully masked row -> all-zero probs -> zero output
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, num_heads, head_dim).astype(q.dtype)
