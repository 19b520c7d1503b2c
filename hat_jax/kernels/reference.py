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
  batch, q_len, _, head_dim = q.shape
  kv_len, num_kv_heads = kv_len_heads(k, kv_layout)
  if q_positions is None:  # arange, or the block ids of spec.blocks
    q_positions = default_positions(batch, q_len, spec)
  if kv_positions is None:
    kv_positions = default_positions(batch, kv_len, spec)
  scale = head_dim**-0.5 if scale is None else scale
  q_grouped = _grouped(q, num_kv_heads)
  logits = _logits(q_grouped, k, kv_layout, scale)
  mask = dense_mask(spec, q_positions, kv_positions, q_segment_ids, kv_segment_ids)  # [b, q, k]
  probs = masked_softmax(logits, mask[:, None, None])
  return _merge_heads(_weighted_values(probs, v, kv_layout), q.dtype)


def cache_attention(
    q: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec = MaskSpec(),
    *,
    q_positions: jax.Array,
    q_segment_ids: jax.Array,
    cache_positions: jax.Array,
    cache_segment_ids: jax.Array,
    cache_length: jax.Array,
    kv_positions: jax.Array,
    kv_segment_ids: jax.Array,
    scale: float | None = None,
) -> jax.Array:
  """Attention of q over a KV cache's filled slots and t new entries, in one softmax: what
  `reference_attention` computes over the cache once the new entries are appended at `cache_length`, read
  before they are (the new entries come as k/v). Returns [batch, q_len, num_heads, head_dim] in q.dtype.

  cache_k/v [batch, kv_heads, max_len, head_dim] (head-major, `layers.KVCache`), with cache_positions /
  cache_segment_ids [batch, max_len] and cache_length [batch] filled slots (later slots, e.g. the ones a
  rollback dropped, are not attended); k/v [batch, t, kv_heads, head_dim] with kv_positions /
  kv_segment_ids [batch, t].

  Why not append, then attend over the cache: a decode step that reads the cache it has just updated
  makes XLA:CPU keep a second copy of every cache buffer per step (the update is fused twice: in place
  for the loop, and into the attention's read); reading the cache before the update lets the update
  happen in place (with `generate.loop_jit`'s region analysis), which made HAT's engine 1.12-1.22x
  faster at batch 1 on CPU, and the same within 2% at batch 16 and 64 (2026-11-30, side by side). Both
  parts are one softmax, so the result differs from appending first only by float summation order.
  """
  check_qkv(q, cache_k, cache_v, "bhtd")
  check_qkv(q, k, v, "bthd")
  max_len, num_kv_heads = kv_len_heads(cache_k, "bhtd")
  scale = q.shape[-1]**-0.5 if scale is None else scale
  q_grouped = _grouped(q, num_kv_heads)
  logits = jnp.concatenate([_logits(q_grouped, cache_k, "bhtd", scale), _logits(q_grouped, k, "bthd", scale)],
                           axis=-1)
  filled = jnp.arange(max_len)[None, None] < cache_length[:, None, None]  # [b, 1, max_len]
  mask = jnp.concatenate([
      dense_mask(spec, q_positions, cache_positions, q_segment_ids, cache_segment_ids) & filled,
      dense_mask(spec, q_positions, kv_positions, q_segment_ids, kv_segment_ids)], axis=-1)  # [b, q, max_len + t]
  probs = masked_softmax(logits, mask[:, None, None])
  out = (_weighted_values(probs[..., :max_len], cache_v, "bhtd")
         + _weighted_values(probs[..., max_len:], v, "bthd"))
  return _merge_heads(out, q.dtype)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """float32 softmax over the last axis where `mask` (broadcast against logits); 0 elsewhere, and a fully
  masked row gives all-zero probabilities (so a zero output, never NaN)."""
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  return weights / jnp.where(denom == 0.0, 1.0, denom)


def _grouped(q: jax.Array, num_kv_heads: int) -> jax.Array:
  """q [b, q, heads, d] -> [b, q, kv_heads, groups, d]: each kv head serves `groups` query heads."""
  batch, q_len, num_heads, head_dim = q.shape
  return q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)


def _logits(q_grouped: jax.Array, k: jax.Array, kv_layout: str, scale: float) -> jax.Array:
  """-> scaled float32 [b, kv_heads, groups, q, k]."""
  kv = "bkhd" if kv_layout == "bthd" else "bhkd"
  return jnp.einsum(f"bqhgd,{kv}->bhgqk", q_grouped, k, preferred_element_type=jnp.float32) * scale


def _weighted_values(probs: jax.Array, v: jax.Array, kv_layout: str) -> jax.Array:
  """probs [b, kv_heads, groups, q, k] -> float32 [b, kv_heads, groups, q, d]."""
  # Batch dims (b, h) leading in the output as in the operands: XLA:CPU then emits one batched matmul;
  # writing [b, q, h, g, d] directly made it a generic, several times slower dot (decode-step profiles).
  kv = "bkhd" if kv_layout == "bthd" else "bhkd"
  return jnp.einsum(f"bhgqk,{kv}->bhgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _merge_heads(out: jax.Array, dtype) -> jax.Array:
  """[b, kv_heads, groups, q, d] -> [b, q, heads, d] in dtype."""
  batch, kv_heads, groups, q_len, head_dim = out.shape
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, kv_heads * groups, head_dim).astype(dtype)
