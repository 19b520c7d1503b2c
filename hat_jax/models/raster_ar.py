"""Raster-order autoregressive baseline: a class-conditional decoder-only transformer over a flat token
sequence, one token per sequential step.

  position 0      class_emb(label)                       (predicts token 0)
  position t > 0  token_emb(token t - 1)                 (predicts token t)
  blocks          layers.Stack, causal, RoPE             logits [B, N, V]

The sequence is either the VAR tokenizer's multi-scale tokens flattened coarse to fine in row-major
order (the same tokens VAR models, so the NLLs are directly comparable) or raw pixels (V = 256).
`RasterAR.step` decodes one token against explicit KV caches; the sampler (N steps, constant
classifier-free guidance) is `hat_jax.generate.images.sample_raster_ar`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec
from hat_jax.models.layers import RMSNorm, Stack, StackConfig, empty_caches, lm_head, small_normal


@dataclasses.dataclass(frozen=True)
class RasterARConfig:
  stack: StackConfig
  seq_len: int  # N tokens per image
  vocab_size: int
  num_classes: int = 10  # class `num_classes` is the null class used for CFG


class RasterAR(nn.Module):
  cfg: RasterARConfig
  attention_impl: str = "auto"

  def setup(self):
    cfg, d = self.cfg, self.cfg.stack.d_model
    self.token_emb = nn.Embed(cfg.vocab_size, d, embedding_init=small_normal(d, ("vocab", "embed")))
    self.class_emb = nn.Embed(cfg.num_classes + 1, d, embedding_init=small_normal(d, ("vocab", "embed")))
    self.stack = Stack(cfg.stack, MaskSpec(causal=True), self.attention_impl)
    self.final_norm = RMSNorm(cfg.stack.norm_eps)
    self.head = lm_head(cfg.vocab_size, use_bias=True)

  def _run(self, h, positions, caches):
    h, caches = self.stack(h, positions=positions, segment_ids=jnp.ones(h.shape[:2], jnp.int32), caches=caches)
    return self.head(self.final_norm(h)), caches

  def __call__(self, labels, tokens):
    """Teacher forcing. labels [B], tokens [B, N] -> logits [B, N, V] (logits[:, t] predicts tokens[:, t])."""
    n = self.cfg.seq_len
    if tokens.ndim != 2 or tokens.shape[1] != n or labels.shape != tokens.shape[:1]:
      raise ValueError(f"Expected labels [batch] and tokens [batch, {n}], got {labels.shape} and {tokens.shape}.")
    h = jnp.concatenate([self.class_emb(labels)[:, None], self.token_emb(tokens[:, :-1])], axis=1)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), tokens.shape)
    return self._run(h, positions, None)[0]

  def step(self, labels, prev_token, t, caches):
    """One decoding step at position t (traced int). prev_token [B] (ignored at t = 0) -> logits [B, V], caches."""
    h = jnp.where(t == 0, self.class_emb(labels), self.token_emb(prev_token))[:, None]
    positions = jnp.full((labels.shape[0], 1), t, jnp.int32)
    logits, caches = self._run(h, positions, caches)
    return logits[:, 0], caches

  def empty_caches(self, batch: int):
    return empty_caches(self.cfg.stack, batch, self.cfg.seq_len)
