"""The decoder-only language model: tokens [B, T] -> embed -> causal `Stack` -> RMSNorm -> head -> logits.

One model for every flat baseline: HAT's byte baseline (task "bytes"), the Block Transformer's vanilla
baseline (task "vanilla_lm"), the BPE-token baseline of experiments/hat_tables and the raster-order image
AR (task "raster_ar": the class token first, then the image's tokens). They differ only in configuration
(`DecoderLMConfig`):

  vocab_size             output classes: 256 for bytes, the tokenizer's size for BPE.
  pad_row                the input table gets one extra row, `pad_id = vocab_size`: a token that is read
                         but never predicted (the Block Transformer's block-aligned rows pad documents
                         with it). Without it, padding slots hold id 0; they are masked by segment id 0.
  num_classes            class tokens: input-only ids after the vocabulary and pad row
                         (`cfg.class_token(labels)`) that condition what follows; the raster AR's
                         classes, with one more for classifier-free guidance's null class.
  vocab_pad_to_multiple  input rows rounded up further (257 -> 264 for 8) so the table's "vocab" dim
                         shards over the tensor-parallel mesh axis; the extra rows are never looked up.
  mask_by_index          mask attention by sequence index (+ segment ids) in training and scoring, which
                         lets the kernels see a static mask and skip tiles. Only for rows whose positions
                         rise by one within each segment (packed byte / BPE rows); `layers.Attention`.
  decoder.window         sliding-window attention (None: full causal); any `StackConfig` field.
  attention_impl, dtype  the attention kernel ("auto" | "xla" | "pallas") and the compute dtype.

Params: embed/embedding, decoder/..., final_norm/scale, head/kernel. Generation with KV caches:
`hat_jax.generate.block_engine.decoder_lm_generate` (one jitted `while_loop`); for images,
`hat_jax.generate.images.generate_raster_ar` (classifier-free guidance).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from hat_jax.models.layers import (
    RMSNorm, Stack, StackConfig, TokenVocab, caches_length, dataclass_from_config, embed_init, lm_head, stack_mask)

# configs/bytes.py names the stack section `stack`: the scaling sweeps override `model.stack.*`, and their
# recorded runs are replayed from those overrides (hat_jax/sweep.py), so that name stays valid.
STACK_ALIAS = "stack"


@dataclasses.dataclass(frozen=True)
class DecoderLMConfig(TokenVocab):
  decoder: StackConfig
  vocab_size: int = 256
  pad_row: bool = False
  num_classes: int = 0
  vocab_pad_to_multiple: int = 1  # 1 keeps vocab_size (+ 1) rows
  mask_by_index: bool = False
  attention_impl: str = "auto"
  dtype: str = "float32"  # compute dtype ("bfloat16" with float32 params = mixed precision)

  def __post_init__(self):
    self.check_vocab()

  @classmethod
  def from_config(cls, cfg) -> "DecoderLMConfig":
    """From `config.model`; the stack section is `decoder`, or `stack` (STACK_ALIAS)."""
    cfg = dict(cfg)
    if STACK_ALIAS in cfg:
      if "decoder" in cfg:
        raise ValueError(f"The decoder LM config has both `decoder` and `{STACK_ALIAS}` sections; they name "
                         "the same transformer stack, give one.")
      cfg["decoder"] = cfg.pop(STACK_ALIAS)
    return dataclass_from_config(cls, cfg, "decoder LM", stacks=("decoder",))


class DecoderLM(nn.Module):
  cfg: DecoderLMConfig

  def setup(self):
    cfg, dtype = self.cfg, self.cfg.jnp_dtype
    self.embed = nn.Embed(cfg.input_vocab_size, cfg.decoder.d_model, embedding_init=embed_init(), dtype=dtype)
    self.decoder = Stack(cfg.decoder, stack_mask(cfg.decoder), cfg.attention_impl, dtype,
                         mask_by_index=cfg.mask_by_index)
    self.final_norm = RMSNorm(cfg.decoder.norm_eps, dtype)
    self.head = lm_head(cfg.vocab_size, dtype=dtype)

  def __call__(self, tokens, *, positions=None, segment_ids=None, caches=None):
    """tokens [B, T] -> logits [B, T, vocab_size] (position t predicts token t+1), caches.

    positions default to each row's cache length onwards (0.. without caches), segment_ids to all 1.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, seq_len], got shape {tokens.shape}.")
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    if positions is None:
      start = 0 if caches is None else caches_length(caches)[:, None]
      positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None], tokens.shape)
    x, caches = self.decoder(self.embed(tokens), positions=positions, segment_ids=segment_ids, caches=caches)
    return self.head(self.final_norm(x)).astype(jnp.float32), caches

