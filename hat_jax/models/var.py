"""VAR: next-scale prediction over the multi-scale VQ tokens of `hat_jax.models.vqvae`.

Reads like VAR's Figure 4:

  position 0          sos = class_emb(label) + pos_start                     (predicts scale 1)
  positions of k+1    word_embed(area_down(f_hat_{<=k}, pn_{k+1}))            (predicts scale k+1)
  every position      + lvl_embed(scale id) + pos_embed(position)
  blocks              AdaLN(class) -> GQA attention, block-causal over scales -> AdaLN -> SwiGLU
  head                AdaLN(class) -> Dense(V)                               logits [B, L, V]

Block-causal attention is `MaskSpec(causal=True)` with the scale id as the position, so a token sees
all tokens of its own and coarser scales; `attention_impl` picks the kernel. `VAR.step` runs one scale
against explicit KV caches (the cache grows by pn^2 per step): the next-scale sampler with classifier-free
guidance is `hat_jax.generate.images.generate_var`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec
from hat_jax.models.layers import KVCache, Layer, Stack, StackConfig, dense_init, empty_caches, lm_head, small_normal

BLOCK_CAUSAL = MaskSpec(causal=True)  # with scale ids as positions


@dataclasses.dataclass(frozen=True)
class VARConfig:
  stack: StackConfig
  scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
  vocab_size: int = 256
  z_channels: int = 16  # Cvae: width of the f_hat-derived inputs
  num_classes: int = 10  # class `num_classes` is the null class used for CFG
  dtype: str = "float32"  # compute dtype ("bfloat16" with float32 params = mixed precision)

  def __post_init__(self):
    object.__setattr__(self, "scales", tuple(self.scales))

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def seq_len(self) -> int:
    return sum(pn * pn for pn in self.scales)

  @property
  def scale_ids(self) -> jax.Array:
    """[L] scale index of every position."""
    return jnp.concatenate([jnp.full((pn * pn,), k, jnp.int32) for k, pn in enumerate(self.scales)])

  def scale_slice(self, k: int) -> slice:
    start = sum(pn * pn for pn in self.scales[:k])
    return slice(start, start + self.scales[k] ** 2)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters (AdaLN supplies scale and shift); float32 statistics."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean((x32 - mean) ** 2, axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class AdaLin(nn.Module):
  """SiLU -> Dense(num * D) on the class embedding [B, D] -> `num` vectors [B, 1, D]. Zero kernel; the
  first `identity_gates` vectors start at 1 (residual gates), the rest at 0 (scales, shifts)."""

  num: int
  identity_gates: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array) -> list[jax.Array]:
    d, num, gates = cond.shape[-1], self.num, self.identity_gates

    def bias_init(key, shape, dtype=jnp.float32):
      return jnp.concatenate([jnp.ones((gates * d,), dtype), jnp.zeros(((num - gates) * d,), dtype)])

    out = nn.Dense(num * d, dtype=self.dtype,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "mlp")),
                   bias_init=nn.with_logical_partitioning(bias_init, ("mlp",)))(nn.silu(cond))
    return jnp.split(out[:, None, :], num, axis=-1)


class AdaLNBlock(Layer):
  """x += g1 * attn(LN(x)(1 + s1) + b1); x += g2 * mlp(LN(x)(1 + s2) + b2), with (g, s, b) from the class
  (`context` = the class embedding [B, D]). Block-causal: the stack's mask with scale ids as positions."""

  @nn.compact
  def __call__(self, x, positions, segment_ids, context, cache: KVCache | None = None):
    # x [B, T, D]; context [B, D]; positions = scale ids [B, T]
    g1, g2, s1, s2, b1, b2 = AdaLin(6, identity_gates=2, dtype=self.dtype, name="ada_lin")(context)
    attn_out, cache = self.attention(rope_theta=None)(layer_norm(x) * (1 + s1) + b1, positions=positions,
                                                      segment_ids=segment_ids, cache=cache)
    x = x + g1 * attn_out
    x = x + g2 * self.mlp()(layer_norm(x) * (1 + s2) + b2)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class VAR(nn.Module):
  cfg: VARConfig
  attention_impl: str = "auto"

  def setup(self):
    cfg, d = self.cfg, self.cfg.stack.d_model
    self.class_emb = nn.Embed(cfg.num_classes + 1, d, embedding_init=small_normal(d, ("vocab", "embed")))
    self.pos_start = self.param("pos_start", small_normal(d, (None, "embed")), (1, d))
    self.word_embed = nn.Dense(d, kernel_init=nn.with_logical_partitioning(dense_init(), (None, "embed")),
                               bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
    self.lvl_embed = nn.Embed(len(cfg.scales), d, embedding_init=small_normal(d, (None, "embed")))
    self.pos_embed = self.param("pos_embed", small_normal(d, ("length", "embed")), (cfg.seq_len, d))
    mask, by_index = self.scale_mask()
    self.blocks = Stack(cfg.stack, mask, self.attention_impl, cfg.jnp_dtype, layer=AdaLNBlock,
                        mask_by_index=by_index)
    self.head_ada = AdaLin(2, dtype=cfg.jnp_dtype)
    self.head = lm_head(cfg.vocab_size, dtype=cfg.jnp_dtype, use_bias=True, init_scale=0.02)

  def scale_mask(self) -> tuple[MaskSpec, bool]:
    """(mask over scale ids, whether the full pass omits positions): VAR's block-causal mask with explicit
    scale ids. HMAR (`hat_jax.models.hmar`) overrides it with its Markovian block layout."""
    return BLOCK_CAUSAL, False

  def _check_labels(self, labels):
    if labels.ndim != 1:
      raise ValueError(f"labels must be [batch] class ids in [0, {self.cfg.num_classes}], got shape {labels.shape}.")

  def _run(self, labels, x_in, first_scale: int, num_scales: int, caches, extra=None):
    """Embed scales [first_scale, first_scale + num_scales) and run the blocks.

    labels [B]; x_in [B, T', Cvae] f_hat-derived inputs of those scales (without the sos position);
    extra [B, T, D] or None: added to every position's input (HMAR's token / mask embeddings).
    Returns logits [B, T, V] and the updated caches.
    """
    cfg = self.cfg
    self._check_labels(labels)
    cond = self.class_emb(labels)  # [B, D]
    parts = []
    if first_scale == 0:
      parts.append((cond + self.pos_start)[:, None, :])  # sos
    if x_in is not None:
      parts.append(self.word_embed(x_in))
    h = jnp.concatenate(parts, axis=1)
    span = slice(cfg.scale_slice(first_scale).start, cfg.scale_slice(first_scale + num_scales - 1).stop)
    if h.shape[1] != span.stop - span.start:
      raise ValueError(f"VAR inputs for scales {cfg.scales[first_scale:first_scale + num_scales]} must have "
                       f"{span.stop - span.start} positions (sos + f_hat inputs), got {h.shape[1]}.")
    scale_ids = jnp.broadcast_to(cfg.scale_ids[span], h.shape[:2])
    h = h + self.lvl_embed(scale_ids) + self.pos_embed[span]
    if extra is not None:
      h = h + extra
    h = h.astype(cfg.jnp_dtype)
    cond = cond.astype(cfg.jnp_dtype)
    segment_ids = jnp.ones(h.shape[:2], jnp.int32)
    h, caches = self.blocks(h, positions=scale_ids, segment_ids=segment_ids, caches=caches, context=cond)
    scale, shift = self.head_ada(cond)
    logits = self.head(layer_norm(h) * (1 + scale) + shift).astype(jnp.float32)
    return logits, caches

  def __call__(self, labels, x_in):
    """Teacher forcing. labels [B]; x_in [B, L - 1, Cvae] (MultiScaleVQVAE.var_inputs) -> logits [B, L, V]."""
    return self._run(labels, x_in, 0, len(self.cfg.scales), None)[0]

  def step(self, labels, x_k, k: int, caches):
    """One scale with KV caches. x_k [B, pn_k^2, Cvae] (None for k = 0) -> logits [B, pn_k^2, V], caches."""
    return self._run(labels, x_k, k, 1, caches)

  def empty_caches(self, batch: int):
    return empty_caches(self.cfg.stack, batch, self.cfg.seq_len, self.cfg.jnp_dtype)


# ---------------------------------------------------------------------------------------------------
# Loss
