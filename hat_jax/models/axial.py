"""Axial Transformer (Ho et al. 2019) for single-channel images, class-conditional.

Reads like the paper's Figure 2 / `Transformer2d`:

  e = pixel_emb(x) + pos_h + pos_w + class_emb                     [B, H, W, D]
  outer context:  (unmasked row attention, masked column attention) x num_outer_layers
                  then shift_down               -> u[i] depends on rows < i only
  inner decoder:  shift_right(pixel_emb(x)) + u + pos + class
                  masked row attention x num_inner_layers
                                                -> (i, j) depends on rows < i and (i, < j): raster order
  head:           RMSNorm -> Dense(levels)      logits [B, H, W, levels]

Axial attention is 1-D attention along one axis with the other axis as batch; it goes through
`hat_jax.kernels.axial_attention`, whose `impl` (the model's `attention_impl`) picks XLA or Pallas.
`context` and `inner_logits` are the two halves the semi-parallel sampler
(`hat_jax.generate.images.generate_axial`) calls: per row, the outer context once on the whole image, then
the inner decoder on that one row, once per pixel (H outer + H*W inner sequential passes).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax.kernels import axial_attention
from hat_jax.models.layers import (RMSNorm, SwiGLU, check_images, dataclass_from_config, dense_init, lm_head,
                                   small_normal)


@dataclasses.dataclass(frozen=True)
class AxialConfig:
  image_size: int = 16
  channels: int = 1  # only 1: channel-sliced (Transformer3d) modelling of colour is not implemented
  levels: int = 256  # pixel values 0..levels-1
  d_model: int = 64
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  num_outer_layers: int = 2  # each = one unmasked row + one masked column block
  num_inner_layers: int = 2  # masked row blocks
  num_classes: int = 10

  def __post_init__(self):
    if self.channels != 1:
      raise ValueError(f"AxialTransformer models single-channel images; got channels={self.channels}. Convert to "
                       "grayscale (per-channel slicing as in the paper's Transformer3d is not implemented).")

  @classmethod
  def from_config(cls, cfg) -> "AxialConfig":
    return dataclass_from_config(cls, cfg, "Axial")


def shift_down(x: jax.Array) -> jax.Array:
  """[B, H, W, D]: row i gets row i - 1, row 0 gets zeros."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def shift_right(x: jax.Array) -> jax.Array:
  """[B, R, W, D]: column j gets column j - 1, column 0 gets zeros."""
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


class AxialAttention(nn.Module):
  """Multi-head attention along one spatial axis of [B, R, W, D] via `hat_jax.kernels.axial_attention`
  (axis 1 = column attention along H, axis 2 = row attention along W; `masked` = causal on that axis)."""

  num_heads: int
  head_dim: int
  axis: int
  masked: bool
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]

    def proj(name, shape, axes):
      return self.param(name, nn.with_logical_partitioning(dense_init(), axes), shape)

    qkv = proj("qkv_proj", (d, 3, self.num_heads, self.head_dim), ("embed", None, "heads", "head_dim"))
    q, k, v = (jnp.einsum("brwd,dhk->brwhk", x, qkv[:, i]) for i in range(3))  # [B, R, W, heads, head_dim]
    out = axial_attention(q, k, v, axis=self.axis, causal=self.masked, impl=self.attention_impl)
    o = proj("o_proj", (self.num_heads, self.head_dim, d), ("heads", "head_dim", "embed"))
    return jnp.einsum("brwhk,hkd->brwd", out, o)


class AxialBlock(nn.Module):
  """Pre-norm block whose attention runs along one axis ("row" = along W, "column" = along H)."""

  cfg: AxialConfig
  axis: str
  masked: bool
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x):  # [B, R, W, D] -> same
    cfg = self.cfg
    x = x + AxialAttention(cfg.num_heads, cfg.head_dim, 2 if self.axis == "row" else 1, self.masked,
                           self.attention_impl, name="attn")(RMSNorm(name="attn_norm")(x))
    return x + SwiGLU(cfg.mlp_dim, name="mlp")(RMSNorm(name="mlp_norm")(x))


class AxialTransformer(nn.Module):
  cfg: AxialConfig
  attention_impl: str = "auto"

  def setup(self):
    cfg, d = self.cfg, self.cfg.d_model
    self.pixel_emb = nn.Embed(cfg.levels, d, embedding_init=small_normal(d, ("vocab", "embed")))
    self.class_emb = nn.Embed(cfg.num_classes, d, embedding_init=small_normal(d, ("vocab", "embed")))
    self.pos_h = self.param("pos_h", small_normal(d, ("length", "embed")), (cfg.image_size, d))
    self.pos_w = self.param("pos_w", small_normal(d, ("length", "embed")), (cfg.image_size, d))
    self.outer = [AxialBlock(cfg, axis, masked, self.attention_impl, name=f"outer_{i}_{axis}")
                  for i in range(cfg.num_outer_layers) for axis, masked in (("row", False), ("column", True))]
    self.inner = [AxialBlock(cfg, "row", True, self.attention_impl, name=f"inner_{i}")
                  for i in range(cfg.num_inner_layers)]
    self.final_norm = RMSNorm()
    self.head = lm_head(cfg.levels, use_bias=True)

  def _position(self, rows: jax.Array) -> jax.Array:
    """rows [R] -> pos_h[rows] + pos_w, [R, W, D]."""
    return self.pos_h[rows][:, None, :] + self.pos_w[None, :, :]

  def context(self, pixels, labels):
    """Outer decoder. pixels int [B, H, W], labels [B] -> u [B, H, W, D] (row i sees rows < i)."""
    h = self.pixel_emb(pixels) + self._position(jnp.arange(self.cfg.image_size)) + self.class_emb(labels)[:, None, None]
    for block in self.outer:
      h = block(h)
    return shift_down(h)

  def inner_logits(self, rows_pixels, u_rows, labels, row_ids):
    """Inner decoder on R rows. rows_pixels [B, R, W], u_rows [B, R, W, D], row_ids [R] -> logits [B, R, W, levels]."""
    h = shift_right(self.pixel_emb(rows_pixels)) + u_rows + self._position(row_ids) + self.class_emb(labels)[:, None, None]
    for block in self.inner:
      h = block(h)
    return self.head(self.final_norm(h))

  def __call__(self, images, labels):
    """images [B, H, W(, 1)] ints 0..levels-1, labels [B] -> logits [B, H, W, levels]."""
    cfg = self.cfg
    pixels = check_images(images, cfg.image_size, cfg.channels)[..., 0]
    if labels.shape != pixels.shape[:1]:
      raise ValueError(f"labels must be [batch] = {pixels.shape[:1]}, got {labels.shape}.")
    return self.inner_logits(pixels, self.context(pixels, labels), labels, jnp.arange(cfg.image_size))
