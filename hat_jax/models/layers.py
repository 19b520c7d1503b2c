"""Shared transformer layers (flax.linen): RMSNorm, RoPE, GQA attention with an explicit KV cache,
SwiGLU MLP, pre-norm blocks and a block stack.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and key activations carry
`nn.with_logical_constraint`; both are no-ops until `hat_jax.sharding` puts rules in context.

KV caches are explicit pytrees (`KVCache`) passed in and returned, never hidden module state: a
decode step is `out, cache = block.apply(params, x, ..., cache=cache)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, reference_attention

Dtype = Any


def dataclass_from_config(cls, cfg, what: str):
  """Build dataclass `cls` from a ConfigDict/mapping, naming unknown fields in the error."""
  cfg = dict(cfg)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg) - names)
  if unknown:
    raise ValueError(f"Unknown {what} config fields {unknown}; valid fields: {sorted(names)}.")
  return cls(**cfg)


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """Shape of one transformer stack (encoder, backbone, decoder, ...)."""

  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  window: int | None = None  # sliding-window self-attention; None = full causal
  rope_theta: float = 10_000.0
  qk_norm: bool = False
  norm_eps: float = 1e-6

  def __post_init__(self):
    for name in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")

  @classmethod
  def from_config(cls, cfg) -> "StackConfig":
    """Build from an ml_collections ConfigDict (or any mapping) with the same field names."""
    return dataclass_from_config(cls, cfg, "transformer-stack")


def dense_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class DenseND(nn.Module):
  """x [..., *in_shape] -> [..., *out_shape] with one kernel [*in_shape, *out_shape] and logical names
  `axes` for its dims. An explicit param + tensordot rather than nn.DenseGeneral: flax 0.12's
  DenseGeneral initialises multi-dim kernels at a flattened rank-2 shape, which breaks their rank-3
  logical constraints under a mesh."""

  out_shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  in_dims: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.in_dims:]
    n_in, n_out = self.in_dims, len(self.out_shape)
    if len(self.axes) != n_in + n_out:
      raise ValueError(f"DenseND needs {n_in + n_out} logical axis names for kernel {in_shape + tuple(self.out_shape)}, "
                       f"got {self.axes}.")
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)),
                                            out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), in_shape + tuple(self.out_shape),
                        self.param_dtype)
    return jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=n_in)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding. x: [batch, len, heads, head_dim]; positions: [batch, len] (any ints)."""
  head_dim = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # [head_dim/2]
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [batch, len, head_dim/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class KVCache(NamedTuple):
  """Preallocated per-layer cache. Slots beyond `length` are empty (segment id 0 never matches a query).

  k, v: [batch, kv_heads, max_len, head_dim], head-major: a decode step reads each (example, head)'s
  keys as one contiguous [max_len, head_dim] matrix (`reference_attention(kv_layout="bhtd")`). The
  sequence-major layout of the attention kernels made XLA transpose the whole cache on every step,
  3-7x slower decode attention on CPU (experiments/block_throughput/README.md).
  positions, segment_ids: [batch, max_len]; length: [batch] number of filled slots (examples may
  advance at different rates).
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  length: jax.Array

  @classmethod
  def empty(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
    return cls(
        k=jnp.zeros((batch, kv_heads, max_len, head_dim), dtype),
        v=jnp.zeros((batch, kv_heads, max_len, head_dim), dtype),
        positions=jnp.zeros((batch, max_len), jnp.int32),
        segment_ids=jnp.zeros((batch, max_len), jnp.int32),
        length=jnp.zeros((batch,), jnp.int32),
    )

  def append(self, k: jax.Array, v: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> "KVCache":
    """Write t new entries per example at its own `length`: k, v [batch, t, kv_heads, head_dim] (the
    projections' layout), positions / segment_ids [batch, t]. Entries with segment id 0 are stored but
    do not advance `length`, so valid entries must come first within each example's t new ones.

    The buffer must have room for all t entries (length + t <= max_len), padding ones included:
    `dynamic_update_slice` clamps an overrunning start index, which would overwrite earlier entries.
    """
    def write(axis):
      return jax.vmap(lambda buf, new, start: jax.lax.dynamic_update_slice_in_dim(buf, new, start, axis=axis))

    start = self.length
    num_valid = jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32)
    def heads_major(x, like):
      return jnp.swapaxes(x, 1, 2).astype(like.dtype)  # [batch, kv_heads, t, head_dim]
    return KVCache(
        k=write(1)(self.k, heads_major(k, self.k), start),
        v=write(1)(self.v, heads_major(v, self.v), start),
        positions=write(0)(self.positions, positions.astype(jnp.int32), start),
        segment_ids=write(0)(self.segment_ids, segment_ids.astype(jnp.int32), start),
        length=self.length + num_valid,
    )

  def attend(self, q: jax.Array, mask: MaskSpec, q_positions: jax.Array, q_segment_ids: jax.Array) -> jax.Array:
    """q [batch, q_len, heads, head_dim] at q_positions -> attention over every cached slot (empty
    slots are masked by their segment id 0), [batch, q_len, heads, head_dim]."""
    return reference_attention(q, self.k, self.v, mask, kv_layout="bhtd", q_positions=q_positions,
                               kv_positions=self.positions, q_segment_ids=q_segment_ids,
                               kv_segment_ids=self.segment_ids)


class Attention(nn.Module):
  """Grouped-query attention. Self-attention when `x_kv` is None; RoPE on query/key positions."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  mask: MaskSpec = MaskSpec()
  rope_theta: float | None = 10_000.0  # None disables RoPE (e.g. pooling queries)
  qk_norm: bool = False
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  out_features: int | None = None
  # Mask by sequence index (+ segment ids) instead of positions when not decoding. Only valid when
  # positions rise by one within each segment (packed training rows), and it lets the kernels see
  # a static mask and skip tiles. Block-causal masks that pass block ids as positions must keep False.
  mask_by_index: bool = False

  @nn.compact
  def __call__(
      self,
      x: jax.Array,  # [batch, q_len, d_model]
      *,
      positions: jax.Array,  # [batch, q_len]
      segment_ids: jax.Array,  # [batch, q_len]
      x_kv: jax.Array | None = None,  # [batch, kv_len, d_kv] for cross-attention
      kv_positions: jax.Array | None = None,
      kv_segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    source = x if x_kv is None else x_kv
    def proj(heads, axes, name, inp):
      return DenseND((heads, self.head_dim), axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(inp)
    q = proj(self.num_heads, ("embed", "heads", "head_dim"), "q_proj", x)
    k = proj(self.num_kv_heads, ("embed", "kv_heads", "head_dim"), "k_proj", source)
    v = proj(self.num_kv_heads, ("embed", "kv_heads", "head_dim"), "v_proj", source)
    if self.qk_norm:
      q = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="q_norm")(q)
      k = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="k_norm")(k)
    if x_kv is None:
      kv_positions, kv_segment_ids = positions, segment_ids
    elif kv_positions is None or kv_segment_ids is None:
      raise ValueError("cross-attention needs kv_positions and kv_segment_ids.")
    if self.rope_theta is not None:
      q = apply_rope(q, positions, self.rope_theta)
      k = apply_rope(k, kv_positions, self.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))

    if cache is not None:
      # Generation: dense attention over the head-major cache whatever `attention_impl` is. The
      # kernels skip tiles only for arange positions, which cache slots do not have, so over a cache
      # they would cost as much as this dense pass (and a decode step has one query row).
      cache = cache.append(k, v, kv_positions, kv_segment_ids)
      out = cache.attend(q, self.mask, positions, segment_ids)
    else:
      by_index = self.mask_by_index and x_kv is None and self.mask.chunk is None
      out = attention(q, k, v, self.mask, impl=self.attention_impl,
                      q_positions=None if by_index else positions, kv_positions=None if by_index else kv_positions,
                      q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids)
    out = DenseND((self.out_features or x.shape[-1],), ("heads", "head_dim", "embed"), in_dims=2, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="o_proj")(out)
    return out, cache


class SwiGLU(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def dense(features, axes, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=nn.with_logical_partitioning(dense_init(), axes))

    gate = dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

  cfg: StackConfig
  mask: MaskSpec
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mask_by_index: bool = False  # see Attention.mask_by_index

  @nn.compact
  def __call__(self, x, *, positions, segment_ids, cache: KVCache | None = None):
    cfg = self.cfg
    attn_out, cache = Attention(
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, mask=self.mask, rope_theta=cfg.rope_theta,
        qk_norm=cfg.qk_norm, attention_impl=self.attention_impl, dtype=self.dtype,
        param_dtype=self.param_dtype, mask_by_index=self.mask_by_index, name="attn")(
            RMSNorm(cfg.norm_eps, self.dtype, self.param_dtype, name="attn_norm")(x),
            positions=positions, segment_ids=segment_ids, cache=cache)
    x = x + attn_out
    x = x + SwiGLU(cfg.mlp_dim, self.dtype, self.param_dtype, name="mlp")(
        RMSNorm(cfg.norm_eps, self.dtype, self.param_dtype, name="mlp_norm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


def stack_mask(cfg: StackConfig, causal: bool = True, chunk: int | None = None) -> MaskSpec:
  return MaskSpec(causal=causal, window=cfg.window, chunk=chunk)


class Stack(nn.Module):
  """`num_layers` blocks sharing one mask. No final norm: callers add one where the paper has it."""

  cfg: StackConfig
  mask: MaskSpec
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mask_by_index: bool = False  # see Attention.mask_by_index

  @nn.compact
  def __call__(self, x, *, positions, segment_ids, caches: tuple[KVCache, ...] | None = None):
    new_caches = []
    for i in range(self.cfg.num_layers):
      x, c = Block(self.cfg, self.mask, self.attention_impl, self.dtype, self.param_dtype, self.mask_by_index,
                   name=f"layer_{i}")(
          x, positions=positions, segment_ids=segment_ids, cache=None if caches is None else caches[i])
      new_caches.append(c)
    return x, (None if caches is None else tuple(new_caches))

  def empty_caches(self, batch: int, max_len: int, dtype=jnp.float32) -> tuple[KVCache, ...]:
    return tuple(KVCache.empty(batch, max_len, self.cfg.num_kv_heads, self.cfg.head_dim, dtype)
                 for _ in range(self.cfg.num_layers))


def embed_init():
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
