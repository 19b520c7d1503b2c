"""Plain-jnp dense attention: the oracle every kernel is tested against.

Layout (all kernels in this package): q [batch, q_len, num_heads, head_dim],
k/v [batch, kv_len, num_kv_heads, head_dim], num_heads % num_kv_heads == 0 (GQA).
Softmax runs in float32; fully masked query rows return zeros (never NaN).

`reference_attention` also takes k/v head-major (`kv_layout="bhtd"`: [batch, kv_heads, kv_len, head_dim]),
the layout of the generation KV caches (`hat_jax.models.layers.KVCache`): there every (batch, head) pair's
keys are one contiguous [kv_len, head_dim] matrix, so a decode step's q.k and p.v are plain batched
matmuls. With [batch, kv_len, heads, head_dim] XLA first transposes the whole cache, every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hat_jax.kernels.masks import MaskSpec, default_positions, dense_mask


KV_LAYOUTS = {"bthd": "[batch, kv_len, kv_heads, head_dim]", "bhtd": "[batch, kv_heads, kv_len, head_dim]"}


def kv_len_heads(k: jax.Array, kv_layout: str) -> tuple[int, int]:
  """(kv_len, num_kv_heads) of k in `kv_layout`."""
  return (k.shape[1], k.shape[2]) if kv_layout == "bthd" else (k.shape[2], k.shape[1])


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array, kv_layout: str = "bthd") -> None:
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f"kv_layout must be one of {sorted(KV_LAYOUTS)}, got {kv_layout!r}.")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"attention expects q [batch, q_len, heads, head_dim] and k/v {KV_LAYOUTS[kv_layout]}; "
        f"got q{q.shape} k{k.shape} v{v.shape}.")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got k{k.shape} v{v.shape}.")
  _, kv_heads = kv_len_heads(k, kv_layout)
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q and k disagree on batch or head_dim: q{q.shape} k{k.shape} ({kv_layout}).")
  if q.shape[2] % kv_heads:
    raise ValueError(
        f"num_heads ({q.shape[2]}) must be a multiple of num_kv_heads ({kv_heads}) for grouped-query attention.")


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
    kv_layout: str = "bthd",
) -> jax.Array:
  """Dense masked softmax attention. Returns [batch, q_len, num_heads, head_dim] in q.dtype.

  k/v are [batch, kv_len, kv_heads, head_dim], or [batch, kv_heads, kv_len, head_dim] with kv_layout="bhtd".
  """
  check_qkv(q, k, v, kv_layout)
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads = kv_len_heads(k, kv_layout)
  kv = "bkhd" if kv_layout == "bthd" else "bhkd"
  if q_positions is None:  # arange, or the block ids of spec.blocks
    q_positions = default_positions(batch, q_len, spec)
  if kv_positions is None:
    kv_positions = default_positions(batch, kv_len, spec)
  scale = head_dim**-0.5 if scale is None else scale
  groups = num_heads // num_kv_heads
  # [batch, q_len, kv_heads, groups, head_dim]: each kv head serves `groups` query heads.
  q_grouped = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  logits = jnp.einsum(f"bqhgd,{kv}->bhgqk", q_grouped, k, preferred_element_type=jnp.float32) * scale
  mask = dense_mask(spec, q_positions, kv_positions, q_segment_ids, kv_segment_ids)  # [b, q, k]
  mask = mask[:, None, None]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom == 0.0, 1.0, denom)  # fully masked row -> all-zero probs -> zero output
  # Batch dims (b, h) leading in the output as in the operands: XLA:CPU then emits one batched matmul;
  # writing [b, q, h, g, d] directly made it a generic, several times slower dot (decode-step profiles).
  out = jnp.einsum(f"bhgqk,{kv}->bhgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, num_heads, head_dim).astype(q.dtype)
