"""Shared transformer layers (flax.linen): RMSNorm, RoPE, GQA attention with an explicit KV cache,
SwiGLU MLP, pre-norm blocks and a block stack.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and key activations carry
`nn.with_logical_constraint`; both are no-ops until `hat_jax.sharding` puts rules in context.

KV caches are explicit pytrees (`KVCache`) passed in and returned, never hidden module state: a
decode step is `out, cache = block.apply(params, x, ..., cache=cache)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, cache_attention, reference_attention

Dtype = Any

# Activation checkpointing per layer (MaxText's `remat_policy`): "none" keeps every activation for the
# backward pass; "full" keeps only each layer's input and recomputes the rest; "save_dots" keeps the
# matmul outputs and recomputes the cheap elementwise work; "save_dots_no_batch" keeps only matmuls
# without batch dimensions (the projections, not attention's q.k and p.v).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def dataclass_from_config(cls, cfg, what: str, *, stacks: tuple[str, ...] = (), **given):
  """The one way a model config dataclass is built from a ConfigDict / mapping (`config.model`).

  `stacks` name fields that hold a `StackConfig` section (each must be present); `given` are fields the
  caller supplies from elsewhere (e.g. HAT's max_word_bytes from config.data), which the mapping must not
  set. A "name" key is ignored. Unknown fields are an error that lists the valid ones.
  """
  cfg = {k: v for k, v in dict(cfg).items() if k != "name"}
  names = {f.name for f in dataclasses.fields(cls)} - set(given)
  unknown = sorted(set(cfg) - names)
  if unknown:
    raise ValueError(f"Unknown {what} config fields {unknown}; valid fields: {sorted(names)}.")
  for stack in stacks:
    if stack not in cfg:
      raise ValueError(f"The {what} config needs a `{stack}` section (a transformer-stack config).")
    cfg[stack] = StackConfig.from_config(cfg[stack])
  return cls(**cfg, **given)


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """Shape of one transformer stack (encoder, backbone, decoder, ...)."""

  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  window: int | None = None  # sliding-window self-attention over `window` keys (the query's own included); None = full causal
  rope_theta: float = 10_000.0
  # Llama 3.1's RoPE frequency scaling ("rope_type": "llama3"): (factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings), e.g. (8.0, 1.0, 4.0, 8192); None = plain RoPE.
  rope_scaling: tuple[float, float, float, int] | None = None
  qk_norm: bool = False
  norm_eps: float = 1e-6
  # How the layers run (not their shape): `scan` compiles one layer and loops it with `nn.scan` (compile
  # time and program size independent of depth; params and caches get a leading "layers" axis, so
  # scanned and unscanned checkpoints differ), `remat` recomputes activations in the backward pass
  # (REMAT_POLICIES).
  scan: bool = False
  remat: str = "none"

  def __post_init__(self):
    for name in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")
    if self.rope_scaling is not None:
      if len(self.rope_scaling) != 4:
        raise ValueError(f"rope_scaling must be (factor, low_freq_factor, high_freq_factor, "
                         f"original_max_position_embeddings) or None, got {self.rope_scaling!r}.")
      object.__setattr__(self, "rope_scaling", tuple(self.rope_scaling))  # hashable (a ConfigDict gives a list)

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


def rope_frequencies(head_dim: int, theta: float, scaling: tuple | None = None) -> jax.Array:
  """RoPE inverse frequencies [head_dim / 2] (float32), with Llama 3.1's scaling when `scaling` is
  (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings): wavelengths longer than
  original / low_freq_factor are slowed by `factor`, shorter than original / high_freq_factor kept, and
  the band between interpolated (transformers' `_compute_llama3_parameters`)."""
  freqs = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  if scaling is None:
    return freqs
  factor, low, high, original = scaling
  wavelen = 2 * math.pi / freqs
  scaled = jnp.where(wavelen > original / low, freqs / factor, freqs)
  smooth = (original / wavelen - low) / (high - low)
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, scaling: tuple | None = None) -> jax.Array:
  """Rotary embedding (rotate-half). x: [batch, len, heads, head_dim]; positions: [batch, len] (any ints)."""
  freqs = rope_frequencies(x.shape[-1], theta, scaling)  # [head_dim/2]
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [batch, len, head_dim/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


KV_CACHE_AXES = ("batch", "kv_heads", "cache_length", "head_dim")


class KVCache(NamedTuple):
  """Preallocated per-layer cache. Slots from `length` on are never attended: empty (segment id 0), or
  dropped by a rollback (`crop_caches`) and written over by the next `append`.

  k, v: [batch, kv_heads, max_len, head_dim], head-major: a decode step reads each (example, head)'s
  keys as one contiguous [max_len, head_dim] matrix (`kernels.reference.cache_attention`). The
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
    ).constrained()

  def constrained(self) -> "KVCache":
    """The cache with its logical axes (batch, kv_heads, cache_length, head_dim) applied: under a mesh the
    rules place it like the activations that fill it (batch over data/fsdp, kv heads over tensor)."""
    return KVCache(
        k=nn.with_logical_constraint(self.k, KV_CACHE_AXES),
        v=nn.with_logical_constraint(self.v, KV_CACHE_AXES),
        positions=nn.with_logical_constraint(self.positions, ("batch", "cache_length")),
        segment_ids=nn.with_logical_constraint(self.segment_ids, ("batch", "cache_length")),
        length=nn.with_logical_constraint(self.length, ("batch",)),
    )

  def attend_and_append(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, q_positions: jax.Array,
                        q_segment_ids: jax.Array, kv_positions: jax.Array,
                        kv_segment_ids: jax.Array) -> tuple[jax.Array, "KVCache"]:
    """q [batch, q_len, heads, head_dim] at q_positions attends over the filled slots and the t new entries
    k, v [batch, t, kv_heads, head_dim] (`append`'s arguments), which are appended. Returns (attention
    output [batch, q_len, heads, head_dim], the cache with the new entries).

    A decode step (one new entry) reads the cache before it is updated, the new entry as a second part of
    the softmax (`kernels.reference.cache_attention` says why). A chunk (a prefill, a re-decode) is
    appended first and attended in the cache: read before, its q x t scores would come on top of the
    q x max_len ones (a prefill's peak memory, measured +6% for a 128-byte prompt in a 2175-slot cache),
    and a chunk runs once, not once per step."""
    t, max_len = k.shape[1], self.k.shape[2]
    if t == 1:
      out = cache_attention(q, self.k, self.v, k, v, mask, q_positions=q_positions, q_segment_ids=q_segment_ids,
                            cache_positions=self.positions, cache_segment_ids=self.segment_ids,
                            cache_length=self.length, kv_positions=kv_positions, kv_segment_ids=kv_segment_ids)
      return out, self.append(k, v, kv_positions, kv_segment_ids)
    new = self.append(k, v, kv_positions, kv_segment_ids)
    written = jnp.arange(max_len)[None] < (self.length + t)[:, None]  # later slots: dropped by a rollback
    out = reference_attention(q, new.k, new.v, mask, kv_layout="bhtd", q_positions=q_positions,
                              kv_positions=new.positions, q_segment_ids=q_segment_ids,
                              kv_segment_ids=jnp.where(written, new.segment_ids, 0))
    return out, new


class Attention(nn.Module):
  """Grouped-query attention. Self-attention when `x_kv` is None; RoPE on query/key positions."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  mask: MaskSpec = MaskSpec()
  rope_theta: float | None = 10_000.0  # None disables RoPE (e.g. pooling queries)
  rope_scaling: tuple | None = None  # see StackConfig.rope_scaling
  qk_norm: bool = False
  attention_impl: str = "auto"
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
      q = apply_rope(q, positions, self.rope_theta, self.rope_scaling)
      k = apply_rope(k, kv_positions, self.rope_theta, self.rope_scaling)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))

    if cache is not None:
      # Generation: dense attention over the head-major cache whatever `attention_impl` is. The
      # kernels skip tiles only for arange positions, which cache slots do not have, so over a cache
      # they would cost as much as this dense pass (and a decode step has one query row).
      out, cache = cache.attend_and_append(q, k, v, self.mask, positions, segment_ids, kv_positions, kv_segment_ids)
    else:
      by_index = self.mask_by_index and x_kv is None and self.mask.chunk is None
      out = attention(q, k, v, self.mask, impl=self.attention_impl,
                      q_positions=None if by_index else positions, kv_positions=None if by_index else kv_positions,
                      q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, site="/".join(self.scope.path))
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


class Layer(nn.Module):
  """What every layer of a `Stack` is built from and called with.

  `__call__(x, positions, segment_ids, context, cache) -> (x, cache)`, positional (so `nn.scan` and
  `nn.remat` can wrap it): x [batch, len, d_model]; positions / segment_ids [batch, len]; `context` is
  one extra input every layer sees unchanged (HAT's per-byte guide vectors, VAR's class condition, the
  Block Transformer's context vectors; None for a plain block); cache one layer's `KVCache` or None.
  """

  cfg: StackConfig
  mask: MaskSpec
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mask_by_index: bool = False  # see Attention.mask_by_index

  def attention(self, name: str = "attn", **overrides) -> Attention:
    cfg = self.cfg
    kwargs = dict(num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, mask=self.mask,
                  rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, qk_norm=cfg.qk_norm, attention_impl=self.attention_impl,
                  dtype=self.dtype, param_dtype=self.param_dtype, mask_by_index=self.mask_by_index)
    return Attention(**{**kwargs, **overrides}, name=name)

  def norm(self, name: str) -> RMSNorm:
    return RMSNorm(self.cfg.norm_eps, self.dtype, self.param_dtype, name=name)

  def mlp(self, name: str = "mlp") -> SwiGLU:
    return SwiGLU(self.cfg.mlp_dim, self.dtype, self.param_dtype, name=name)


class Block(Layer):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x)). Ignores `context`."""

  @nn.compact
  def __call__(self, x, positions, segment_ids, context=None, cache: KVCache | None = None):
    del context
    attn_out, cache = self.attention()(self.norm("attn_norm")(x), positions=positions, segment_ids=segment_ids,
                                       cache=cache)
    x = x + attn_out
    x = x + self.mlp()(self.norm("mlp_norm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


def stack_mask(cfg: StackConfig, causal: bool = True, chunk: int | None = None) -> MaskSpec:
  return MaskSpec(causal=causal, window=cfg.window, chunk=chunk)


class Stack(nn.Module):
  """`num_layers` layers of one kind sharing one mask: the one layer loop of every model.

  Unrolled (params `layer_0`, `layer_1`, ...; caches a tuple, one per layer) or, with `cfg.scan`, one
  `nn.scan` over a "layers" axis (params `layers/...` with a leading [num_layers] dim; caches one
  `KVCache` whose arrays carry that leading dim). `cfg.remat` wraps each layer in `nn.remat`. No final
  norm: callers add one where the paper has it.
  """

  cfg: StackConfig
  mask: MaskSpec
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mask_by_index: bool = False  # see Attention.mask_by_index
  layer: type = Block  # a `Layer` subclass
  layer_fields: tuple = ()  # ((name, value), ...): the layer class's own extra fields, the same for every layer

  @nn.compact
  def __call__(self, x, *, positions, segment_ids, caches=None, context=None):
    cfg = self.cfg
    layer = self.layer
    if cfg.remat != "none":
      # prevent_cse guards remat against XLA's common-subexpression elimination; inside a scan the loop
      # already does, and leaving it on there costs speed (flax docs).
      layer = nn.remat(layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan)
    fields = dict(cfg=cfg, mask=self.mask, attention_impl=self.attention_impl, dtype=self.dtype,
                  param_dtype=self.param_dtype, mask_by_index=self.mask_by_index, **dict(self.layer_fields))
    if cfg.scan:
      check_caches(caches, cfg, "a scanned")
      scanned = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      return scanned(**fields, name="layers")(x, positions, segment_ids, context, caches)
    check_caches(caches, cfg, "an unscanned")
    new_caches = []
    for i in range(cfg.num_layers):
      x, c = layer(**fields, name=f"layer_{i}")(x, positions, segment_ids, context,
                                                None if caches is None else caches[i])
      new_caches.append(c)
    return x, (None if caches is None else tuple(new_caches))


def empty_caches(cfg: StackConfig, batch: int, max_len: int, dtype=jnp.float32):
  """The one cache factory: empty KV caches for a stack, [batch, kv_heads, max_len, head_dim] per layer;
  a tuple of `num_layers` caches, or (`cfg.scan`) one cache with a leading [num_layers] dim."""
  one = lambda: KVCache.empty(batch, max_len, cfg.num_kv_heads, cfg.head_dim, dtype)  # noqa: E731
  if cfg.scan:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (cfg.num_layers,) + x.shape), one())
  return tuple(one() for _ in range(cfg.num_layers))


def check_caches(caches, cfg: StackConfig, what: str) -> None:
  if caches is None:
    return
  stacked = isinstance(caches, KVCache)
  if stacked != cfg.scan:
    raise ValueError(
        f"{what} stack got caches {'stacked in one KVCache' if stacked else 'as a tuple'}; build them with "
        "hat_jax.models.layers.empty_caches for the same StackConfig (scan=True stacks the layers' caches).")
  count = caches.k.shape[0] if stacked else len(caches)
  if count != cfg.num_layers:
    raise ValueError(f"{what} stack of {cfg.num_layers} layers got caches for {count} layers.")


def caches_length(caches) -> jax.Array:
  """[batch] filled slots of a stack's caches (all layers advance together)."""
  return caches.length[0] if isinstance(caches, KVCache) else caches[0].length


def reset_caches(caches, rows: jax.Array):
  """Empty the caches of the rows where `rows` [batch] is True (a new sequence starts there); either cache
  layout. Their old entries stay in place, never attended again (`KVCache`), and are written over."""
  return crop_caches(caches, jnp.where(rows, caches_length(caches), 0))


def crop_caches(caches, amount: jax.Array):
  """Forget the last `amount` [batch] entries of every layer's cache (rollback); either cache layout."""
  if isinstance(caches, KVCache):
    return caches._replace(length=caches.length - amount)
  return tuple(c._replace(length=c.length - amount) for c in caches)


def lm_head(vocab: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, use_bias: bool = False,
            init_scale: float = 1.0, name: str | None = None) -> nn.Dense:
  """The output projection of every model: [..., d] -> [..., vocab] logits, kernel on (embed, vocab)."""
  return nn.Dense(vocab, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(dense_init(init_scale), ("embed", "vocab")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))


def embed_init():
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))


def scan_layer_params(tree):
  """Params of unscanned stacks -> the scanned layout: every dict whose keys are exactly `layer_0` ..
  `layer_{n-1}` becomes {"layers": the n subtrees stacked on a new leading axis}. Converts a checkpoint's
  params (or optimizer moments) for `StackConfig.scan=True`; `unscan_layer_params` is the inverse."""
  if not isinstance(tree, dict):
    return tree
  keys = set(tree)
  n = len(keys)
  if n and keys == {f"layer_{i}" for i in range(n)}:
    layers = [scan_layer_params(tree[f"layer_{i}"]) for i in range(n)]
    return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return {k: scan_layer_params(v) for k, v in tree.items()}


def unscan_layer_params(tree):
  """The inverse of `scan_layer_params`: {"layers": stacked} -> {"layer_0": ..., "layer_{n-1}": ...}."""
  if not isinstance(tree, dict):
    return tree
  if set(tree) == {"layers"}:
    stacked = tree["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {f"layer_{i}": unscan_layer_params(jax.tree.map(lambda x, i=i: x[i], stacked)) for i in range(n)}
  return {k: unscan_layer_params(v) for k, v in tree.items()}


# -- shared by the image models (VAR, raster AR, Axial Transformer, VQVAE) ---------------------------


def small_normal(d_model: int, axes):
  """N(0, 1 / (3 d_model)) with logical axes: VAR's init for its class, position and level tables, which
  the other image models reuse so that their embeddings start at the same scale."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=math.sqrt(1.0 / (3 * d_model))), axes)


def check_images(images: Any, image_size: int, channels: int) -> jax.Array:
  """uint8/int images [B, H, W] or [B, H, W, C] in 0..255 -> int32 [B, H, W, C], with a clear error."""
  given = shape = tuple(jnp.shape(images))
  if len(shape) == 3 and channels == 1:
    images = jnp.asarray(images)[..., None]
    shape = shape + (1,)
  expected = f"[batch, {image_size}, {image_size}, {channels}]" + (
      f" (or [batch, {image_size}, {image_size}])" if channels == 1 else "")
  if len(shape) != 4 or shape[1:3] != (image_size, image_size):
    raise ValueError(
        f"Expected images of shape {expected} with values 0..255, got shape {given}. Resize or pad the images "
        f"(MNIST 28x28 is padded to 32 and 2x2-average-pooled to 16 by hat_jax.data.images."
        f"prepare_mnist_images), or set the model's image_size.")
  if shape[3] != channels:
    raise ValueError(f"Expected {channels} channel(s) (shape {expected}), got {shape[3]} channels in shape {shape}. "
                     f"Convert the images (e.g. to grayscale) or set the model's channels.")
  return jnp.asarray(images).astype(jnp.int32)


class TokenVocab:
  """Input/output vocabulary of a config with `vocab_size`, `pad_row`, `vocab_pad_to_multiple` and `dtype`
  (`DecoderLMConfig`, and `BlockTransformerConfig`, whose rows always need the pad row).

  Input rows: [0, vocab_size) tokens, then the pad row (if any), then `num_classes` class tokens (a
  config that has none keeps this class attribute's 0; `DecoderLMConfig` makes it a field).
  """

  num_classes: int = 0

  def check_vocab(self) -> None:
    if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
      raise ValueError(f"vocab_size must be an int >= 2, got {self.vocab_size!r}.")
    if not isinstance(self.pad_row, bool):
      raise ValueError(f"pad_row must be a bool, got {self.pad_row!r}.")
    if not isinstance(self.num_classes, int) or self.num_classes < 0:
      raise ValueError(f"num_classes must be an int >= 0 (0: no class tokens), got {self.num_classes!r}.")
    if not isinstance(self.vocab_pad_to_multiple, int) or self.vocab_pad_to_multiple < 1:
      raise ValueError(f"vocab_pad_to_multiple must be a positive int (e.g. the tensor-parallel size), "
                       f"got {self.vocab_pad_to_multiple!r}.")

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def pad_id(self) -> int:
    """The id that fills padding slots of inputs and outputs: the pad row, or 0 without one."""
    return self.vocab_size if self.pad_row else 0

  @property
  def input_vocab_size(self) -> int:
    """Rows of the input embedding table: vocabulary (+ pad row) + class tokens, rounded up to
    vocab_pad_to_multiple."""
    multiple = self.vocab_pad_to_multiple
    return -(-(self.vocab_size + int(self.pad_row) + self.num_classes) // multiple) * multiple

  def class_token(self, labels):
    """Class labels [...] in [0, num_classes) -> their input ids [...] (read, never predicted)."""
    return labels + (self.vocab_size + int(self.pad_row))
