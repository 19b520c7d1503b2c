"""Hierarchical Autoregressive Transformer (Neitemeier et al. 2025; TFree-HAT 2025).

Reads like the released TFree-HAT figure, top to bottom:

  bytes [B, S] ──embed──> ENCODER (causal, sliding window over the byte stream)      h_enc [B, S, d_enc]
        │                                                                                   │
        │      WORD POOL: one learned query cross-attends to each word's bytes               │
        │                                                 word_emb [B, W, D]                │
        │      BACKBONE (causal over words, RoPE over word positions)  out [B, W, D]        │
        │      shift right by one word (learned embedding at a document's first word)       │
        │                                                 guide [B, W, D] -> per byte       │
        └──────────────────────────> DECODER: h_enc + per layer (proj(norm(guide)) add,     │
                                     then causal sliding-window self-attention) ──> logits [B, S, 256]

Byte t of word j is decoded with the backbone output of word j-1, so no byte sees its own word's
embedding. Because the decoder's only word-level input is a single vector per word, cross-attention
to it has one key and softmax weight 1; it is exactly a linear map of the normed vector, which is what
`GuideAdd` computes (as in the released vLLM port).

`variant="released"` is the released TFree-HAT architecture exactly, so its checkpoints load
(`python -m hat_jax.convert`): the word pool is the released connector (`ReleasedWordPool`: a latent
query through q_proj, GQA keys/values, optional QK-norm, RoPE at word vs byte positions), the decoder's
guide is the released cross-attention reduced to o_proj(repeat_kv(v_proj(kv_norm(guide)))) in layer 0
only unless `guide_every_layer` (`ReleasedDecoderBlock`), and there is no norm after the backbone.
Weights the released model holds but never uses (the decoder cross-attention's q/k projections and QK
norms, `query_norm`) are kept as params so a converted checkpoint writes back bit for bit. Windows are in
this project's convention (w keys, the query's own included): the released `sliding_window` w is w + 1 here.

`variant="paper"` selects the paper's design instead (`PaperHAT`): a bidirectional within-word encoder
reading `[W] + bytes` and taking the [W] state as the word embedding, and a per-word causal decoder over
`[p_{j-1}; bytes of word j]` that ends each word by predicting the END_OF_WORD byte.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax import losses
from hat_jax.data.splitter import END_OF_WORD, VOCAB_SIZE
from hat_jax.kernels import MaskSpec
from hat_jax.models.layers import (
    Block, DenseND, Layer, RMSNorm, Stack, StackConfig, apply_rope, dataclass_from_config, dense_init, embed_init,
    empty_caches as stack_caches, lm_head)

HAT_VARIANTS = ("tfree", "paper", "released")
QK_NORMS = ("none", "per_head", "full")  # the released cross-attentions' key_query_norm(_per_head)


@dataclasses.dataclass(frozen=True)
class HATConfig:
  encoder: StackConfig
  backbone: StackConfig
  decoder: StackConfig
  max_word_bytes: int
  variant: str = "tfree"
  pool_heads: int = 4
  attention_impl: str = "auto"
  dtype: str = "float32"
  # variant="released" only (the released encoder connector and decoder cross-attention configs):
  pool_kv_heads: int = 0  # 0: pool_heads
  pool_qk_norm: str = "none"  # QK_NORMS
  guide_heads: int = 4
  guide_kv_heads: int = 0  # 0: guide_heads
  guide_hidden: int = 0  # cross-attention width (heads x head_dim); 0: decoder.d_model
  guide_qk_norm: str = "none"
  guide_every_layer: bool = True  # the released `cross_attn_every_layer`: else layer 0 only

  def __post_init__(self):
    if self.variant not in HAT_VARIANTS:
      raise ValueError(f"model.variant must be one of {HAT_VARIANTS}, got {self.variant!r}.")
    if self.variant == "released":
      self._check_released()
    if self.variant in ("tfree", "released") and self.encoder.d_model != self.decoder.d_model:
      raise ValueError(
          "the tfree HAT decoder starts from the encoder's byte states, so model.encoder.d_model "
          f"({self.encoder.d_model}) must equal model.decoder.d_model ({self.decoder.d_model}).")
    if self.backbone.d_model % self.pool_heads:
      raise ValueError(f"model.backbone.d_model ({self.backbone.d_model}) must be divisible by "
                       f"model.pool_heads ({self.pool_heads}).")

  def _check_released(self) -> None:
    for name in ("pool_qk_norm", "guide_qk_norm"):
      if getattr(self, name) not in QK_NORMS:
        raise ValueError(f"model.{name} must be one of {QK_NORMS}, got {getattr(self, name)!r}.")
    for heads, kv in (("pool_heads", "pool_kv_heads"), ("guide_heads", "guide_kv_heads")):
      if getattr(self, heads) % (getattr(self, kv) or getattr(self, heads)):
        raise ValueError(f"model.{heads} ({getattr(self, heads)}) must be a multiple of model.{kv} "
                         f"({getattr(self, kv)}).")
    if self.released_guide_hidden % self.guide_heads:
      raise ValueError(f"the decoder cross-attention width ({self.released_guide_hidden}, model.guide_hidden) must "
                       f"divide into model.guide_heads ({self.guide_heads}).")
    if self.decoder.scan:
      raise ValueError("variant='released' builds decoder layer 0 apart from the others (the released model "
                       "cross-attends in layer 0 only unless cross_attn_every_layer): set model.decoder.scan=False.")

  @property
  def released_guide_hidden(self) -> int:
    return self.guide_hidden or self.decoder.d_model

  @classmethod
  def from_config(cls, model_cfg, max_word_bytes: int) -> "HATConfig":
    return dataclass_from_config(cls, model_cfg, "HAT model", stacks=("encoder", "backbone", "decoder"),
                                 max_word_bytes=max_word_bytes)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def gather_words(h: jax.Array, word_starts: jax.Array, word_lengths: jax.Array, max_word_bytes: int):
  """Bytes of each word, padded: h [B, S, ...] -> ([B, W, M, ...], mask [B, W, M])."""
  offsets = jnp.arange(max_word_bytes)
  idx = jnp.minimum(word_starts[..., None] + offsets, h.shape[1] - 1)  # [B, W, M]
  mask = offsets < word_lengths[..., None]
  b, w, m = idx.shape
  gathered = jnp.take_along_axis(h, idx.reshape(b, w * m, *([1] * (h.ndim - 2))), axis=1)
  return gathered.reshape(b, w, m, *h.shape[2:]), mask


def byte_owner(word_starts: jax.Array, word_lengths: jax.Array, num_bytes: int) -> tuple[jax.Array, jax.Array]:
  """Which word holds each byte, in O(bytes + words): word_starts / word_lengths [B, W] ->
  (owner [B, S] word index, inside [B, S] whether byte t lies in that word).

  Words are contiguous, in order, and padding words have length 0: scatter j + 1 at each real word's
  start, then a running max carries it over the word's bytes (and past its end, which `inside` drops).
  """
  b, w = word_starts.shape
  real = word_lengths > 0
  marks = jnp.zeros((b, num_bytes), jnp.int32)
  marks = jax.vmap(lambda m, at, val: m.at[at].max(val, mode="drop"))(
      marks, jnp.where(real, word_starts, num_bytes), jnp.where(real, jnp.arange(1, w + 1), 0))
  owner = jax.lax.cummax(marks, axis=1) - 1  # [B, S]; -1 before the first word
  safe = jnp.maximum(owner, 0)
  end = jnp.take_along_axis(word_starts + word_lengths, safe, axis=1)
  inside = (owner >= 0) & (jnp.arange(num_bytes)[None] < end)
  return safe, inside


def pool_words_softmax(scores: jax.Array, values: jax.Array, word_starts: jax.Array, word_lengths: jax.Array
                       ) -> jax.Array:
  """Per-word softmax pooling: scores [B, S, H] and values [B, S, H, hd] of the bytes -> [B, W, H, hd], each
  word the softmax(scores)-weighted mean of its own bytes' values; padding words (length 0) pool to zero.

  A segment softmax over the byte axis (each byte's word is its segment, `jax.ops.segment_max` /
  `segment_sum`): memory and work are linear in bytes + words, where a [B, S, W] membership mask would be
  quadratic in context (16,384 bytes x ~3,300 words x heads is ~0.9 GB per row for each float32 tensor of
  that shape, forward and backward).
  """
  num_words = word_starts.shape[1]
  owner, inside = byte_owner(word_starts, word_lengths, scores.shape[1])
  segment = jnp.where(inside, owner, num_words)  # bytes outside every word go to a dropped segment

  def per_row(scores, values, segment):  # [S, H], [S, H, hd], [S] -> [W, H, hd]
    seg_max = jax.ops.segment_max(scores, segment, num_words + 1)
    seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
    weights = jnp.exp(scores - seg_max[segment])  # [S, H]
    denom = jax.ops.segment_sum(weights, segment, num_words + 1)  # [W + 1, H]; 0 for padding words
    total = jax.ops.segment_sum(weights[..., None].astype(values.dtype) * values, segment, num_words + 1)
    return (total / jnp.maximum(denom, 1e-30)[..., None].astype(total.dtype))[:num_words]

  return jax.vmap(per_row)(scores, values, segment)


class WordPool(nn.Module):
  """Learned-query cross-attention over the bytes of each word: h_enc [B, S, d_enc] -> [B, W, D]
  (`pool_words_softmax`: linear in context)."""

  d_out: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_enc: jax.Array, word_starts: jax.Array, word_lengths: jax.Array) -> jax.Array:
    head_dim = self.d_out // self.num_heads
    query = self.param("latent_query", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", "head_dim")),
                       (self.num_heads, head_dim))
    kv = DenseND((2, self.num_heads, head_dim), ("embed", None, "heads", "head_dim"), dtype=self.dtype,
                 name="kv_proj")(RMSNorm(dtype=self.dtype, name="kv_norm")(h_enc))
    k, v = kv[:, :, 0], kv[:, :, 1]  # [B, S, H, hd]
    scores = jnp.einsum("hd,bshd->bsh", query.astype(self.dtype), k).astype(jnp.float32) * head_dim**-0.5
    pooled = pool_words_softmax(scores, v, word_starts, word_lengths)  # [B, W, H, hd]
    out = DenseND((self.d_out,), ("heads", "head_dim", "embed"), in_dims=2, dtype=self.dtype, name="o_proj")(
        pooled.astype(self.dtype))
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class GuideAdd(nn.Module):
  """Decoder cross-attention to the single predictive word vector: x + W(norm(guide))."""

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, guide: jax.Array) -> jax.Array:
    g = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="guide_norm")(guide)
    return x + nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="proj",
                        kernel_init=nn.with_logical_partitioning(dense_init(), ("mlp", "embed")))(g)


class GuidedBlock(Layer):
  """A TFree-HAT decoder layer: add the guide (context [B, T, D], the previous word's backbone output per
  byte) through `GuideAdd`, then a causal sliding-window `Block` over the bytes."""

  @nn.compact
  def __call__(self, x, positions, segment_ids, context, cache=None):
    x = GuideAdd(self.dtype, self.param_dtype, name="guide")(x, context)
    return Block(self.cfg, self.mask, self.attention_impl, self.dtype, self.param_dtype, self.mask_by_index,
                 name="block")(x, positions, segment_ids, None, cache)


def _qk_norm(x: jax.Array, kind: str, eps: float, dtype, name: str) -> jax.Array:
  """The released cross-attention's QK RMSNorm on x [..., heads, head_dim]: per head (scale [head_dim]) or
  over all heads at once ("full", scale [heads * head_dim])."""
  if kind == "none":
    return x
  if kind == "per_head":
    return RMSNorm(eps, dtype, name=name)(x)
  return RMSNorm(eps, dtype, name=name)(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)


class ReleasedWordPool(nn.Module):
  """The released encoder connector: h_enc [B, S, d_enc] -> word embeddings [B, W, D].

  One learned latent query [D] -> q_proj -> [H, hd], keys / values [B, S, K, hd] from the encoder states
  (GQA: K kv heads), QK RMSNorm before RoPE, RoPE on the query at the word's position and on the keys at
  the bytes' positions (the encoder's RoPE), softmax over each word's own bytes only, o_proj -> D."""

  d_out: int
  num_heads: int
  num_kv_heads: int
  encoder: StackConfig  # the pool's head_dim, norm eps and RoPE are the encoder's
  qk_norm: str = "none"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_enc, word_starts, word_lengths, byte_positions, word_positions):
    enc, heads, kv_heads = self.encoder, self.num_heads, self.num_kv_heads
    hd = enc.head_dim
    latent = self.param("latent_query", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                        (self.d_out,))
    def proj(n, name, x):
      return DenseND((n, hd), ("embed", "heads" if n == heads else "kv_heads", "head_dim"), dtype=self.dtype,
                     name=name)(x)
    q = _qk_norm(proj(heads, "q_proj", latent), self.qk_norm, enc.norm_eps, self.dtype, "norm_query")  # [H, hd]
    k = _qk_norm(proj(kv_heads, "k_proj", h_enc), self.qk_norm, enc.norm_eps, self.dtype, "norm_key")  # [B,S,K,hd]
    v = proj(kv_heads, "v_proj", h_enc)
    q_words = apply_rope(jnp.broadcast_to(q, word_positions.shape + q.shape), word_positions, enc.rope_theta,
                         enc.rope_scaling)  # [B, W, H, hd]
    k = apply_rope(k, byte_positions, enc.rope_theta, enc.rope_scaling)
    owner, _ = byte_owner(word_starts, word_lengths, h_enc.shape[1])
    q_bytes = jnp.take_along_axis(q_words, owner[:, :, None, None], axis=1)  # [B, S, H, hd]: each byte's word
    group = heads // kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # query head h reads kv head h // group
    scores = jnp.einsum("bshd,bshd->bsh", q_bytes, k).astype(jnp.float32) * hd**-0.5
    pooled = pool_words_softmax(scores, v, word_starts, word_lengths)  # [B, W, H, hd]
    out = DenseND((self.d_out,), ("heads", "head_dim", "embed"), in_dims=2, dtype=self.dtype, name="o_proj")(
        pooled.astype(self.dtype))
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


@dataclasses.dataclass(frozen=True)
class ReleasedGuide:
  """A released decoder block's cross-attention settings (`ReleasedDecoderBlock.guide`)."""
  cross: bool  # this layer cross-attends (layer 0, or every layer with cross_attn_every_layer)
  d_guide: int  # backbone width (the cross-attention's kv input)
  hidden: int  # cross-attention width
  heads: int
  kv_heads: int
  qk_norm: str


class ReleasedCrossAttention(nn.Module):
  """The released decoder cross-attention from bytes x [B, T, d] to one guide vector per byte [B, T, D]:
  with a single key the softmax weight is 1, so the output is o_proj(repeat_kv(v_proj(guide))) and q_proj,
  k_proj and the QK norms have no effect. They are params all the same (the checkpoint holds them)."""

  guide: ReleasedGuide
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, guide):
    g, d = self.guide, x.shape[-1]
    hd = g.hidden // g.heads
    def param(name, shape, axes, init=dense_init()):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
    param("q_proj", (d, g.heads, hd), ("embed", "heads", "head_dim"))
    param("k_proj", (g.d_guide, g.kv_heads, hd), ("embed", "kv_heads", "head_dim"))
    v_proj = param("v_proj", (g.d_guide, g.kv_heads, hd), ("embed", "kv_heads", "head_dim"))
    o_proj = param("o_proj", (g.heads, hd, d), ("heads", "head_dim", "embed"))
    if g.qk_norm != "none":
      for name, heads in (("norm_query", g.heads), ("norm_key", g.kv_heads)):
        param(name, (hd if g.qk_norm == "per_head" else heads * hd,), ("norm",), nn.initializers.ones)
    v = jnp.tensordot(guide.astype(self.dtype), v_proj.astype(self.dtype), axes=1)  # [B, T, K, hd]
    v = jnp.repeat(v, g.heads // g.kv_heads, axis=2)  # [B, T, H, hd]: query head h reads kv head h // group
    return jnp.tensordot(v, o_proj.astype(self.dtype), axes=2)  # [B, T, d]


class ReleasedDecoderBlock(Layer):
  """A released decoder block: x + ReleasedCrossAttention(kv_norm(guide)) when this layer cross-attends,
  then a Llama layer. `query_norm` exists in every released block and is never applied."""

  guide: ReleasedGuide | None = None

  @nn.compact
  def __call__(self, x, positions, segment_ids, context, cache=None):
    eps = self.cfg.norm_eps
    self.param("query_norm", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
               self.param_dtype)
    kv_norm = RMSNorm(eps, self.dtype, self.param_dtype, name="kv_norm")(context)
    if self.guide.cross:
      x = x + ReleasedCrossAttention(self.guide, self.dtype, self.param_dtype, name="cross")(x, kv_norm)
    return Block(self.cfg, self.mask, self.attention_impl, self.dtype, self.param_dtype, self.mask_by_index,
                 name="block")(x, positions, segment_ids, None, cache)


class HAT(nn.Module):
  """The released (TFree-HAT) design. Methods are the stages; `__call__` runs them all on a batch."""

  cfg: HATConfig

  def setup(self):
    cfg, dtype = self.cfg, self.cfg.jnp_dtype
    window = lambda stack: MaskSpec(causal=True, window=stack.window)
    self.byte_embed = nn.Embed(VOCAB_SIZE, cfg.encoder.d_model, embedding_init=embed_init(), dtype=dtype)
    self.encoder = Stack(cfg.encoder, window(cfg.encoder), cfg.attention_impl, dtype, mask_by_index=True)
    released = cfg.variant == "released"
    if released:
      self.pool = ReleasedWordPool(cfg.backbone.d_model, cfg.pool_heads, cfg.pool_kv_heads or cfg.pool_heads,
                                   cfg.encoder, cfg.pool_qk_norm, dtype)
    else:
      self.pool = WordPool(cfg.backbone.d_model, cfg.pool_heads, dtype)
    self.backbone_stack = Stack(cfg.backbone, window(cfg.backbone), cfg.attention_impl, dtype, mask_by_index=True)
    self.backbone_norm = None if released else RMSNorm(cfg.backbone.norm_eps, dtype)  # released: no norm
    self.first_word = self.param("first_word_embedding",
                                 nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                                 (cfg.backbone.d_model,))
    if released:
      # Layer 0 always cross-attends, the others only with guide_every_layer: two stacks.
      guide = lambda cross: (("guide", ReleasedGuide(  # noqa: E731
          cross, cfg.backbone.d_model, cfg.released_guide_hidden, cfg.guide_heads,
          cfg.guide_kv_heads or cfg.guide_heads, cfg.guide_qk_norm)),)
      rest = cfg.decoder.num_layers - 1
      self.decoder = Stack(dataclasses.replace(cfg.decoder, num_layers=1), window(cfg.decoder), cfg.attention_impl,
                           dtype, mask_by_index=True, layer=ReleasedDecoderBlock, layer_fields=guide(True))
      self.decoder_rest = None if rest == 0 else Stack(
          dataclasses.replace(cfg.decoder, num_layers=rest), window(cfg.decoder), cfg.attention_impl, dtype,
          mask_by_index=True, layer=ReleasedDecoderBlock, layer_fields=guide(cfg.guide_every_layer))
    else:
      self.decoder = Stack(cfg.decoder, window(cfg.decoder), cfg.attention_impl, dtype, mask_by_index=True,
                           layer=GuidedBlock)
    self.final_norm = RMSNorm(cfg.decoder.norm_eps, dtype)
    self.lm_head = lm_head(VOCAB_SIZE, dtype=dtype)

  # -- stages --------------------------------------------------------------------------------------
  def encode(self, byte_ids, positions, segment_ids, caches=None):
    """bytes [B, T] -> encoder byte states [B, T, d_enc]."""
    return self.encoder(self.byte_embed(byte_ids), positions=positions, segment_ids=segment_ids, caches=caches)

  def pool_words(self, h_enc, word_starts, word_lengths, byte_positions=None, word_positions=None):
    """encoder states [B, S, d_enc] -> word embeddings [B, W, D]. The released pool also needs the bytes'
    positions [B, S] and the words' positions [B, W] (its RoPE)."""
    if self.cfg.variant == "released":
      return self.pool(h_enc, word_starts, word_lengths, byte_positions, word_positions)
    return self.pool(h_enc, word_starts, word_lengths)

  def backbone(self, word_emb, word_positions, word_segment_ids, caches=None):
    """word embeddings [B, W, D] -> backbone outputs [B, W, D] (the predictions of the next word; normed
    except in the released variant)."""
    out, caches = self.backbone_stack(word_emb, positions=word_positions, segment_ids=word_segment_ids, caches=caches)
    return (out if self.backbone_norm is None else self.backbone_norm(out)), caches

  def first_word_embedding(self):
    return self.first_word

  def shift_to_next_word(self, out, word_segment_ids):
    """guide[j] = out[j-1] within a document; the learned first-word embedding at a document's first word."""
    prev = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
    same_doc = jnp.concatenate([jnp.zeros_like(word_segment_ids[:, :1], dtype=bool),
                                word_segment_ids[:, 1:] == word_segment_ids[:, :-1]], axis=1)
    return jnp.where(same_doc[..., None], prev, self.first_word.astype(out.dtype))

  def decode(self, h_enc, guide, positions, segment_ids, caches=None):
    """encoder states [B, T, d] + per-byte guide vectors [B, T, D] -> next-byte logits [B, T, 256]."""
    if self.cfg.variant == "released":  # caches: one tuple over all decoder layers, split between the stacks
      x, first = self.decoder(h_enc, positions=positions, segment_ids=segment_ids, context=guide,
                              caches=None if caches is None else caches[:1])
      rest = None
      if self.decoder_rest is not None:
        x, rest = self.decoder_rest(x, positions=positions, segment_ids=segment_ids, context=guide,
                                    caches=None if caches is None else caches[1:])
      caches = None if caches is None else first + (rest or ())
    else:
      x, caches = self.decoder(h_enc, positions=positions, segment_ids=segment_ids, caches=caches, context=guide)
    return self.lm_head(self.final_norm(x)).astype(jnp.float32), caches

  # -- training forward ----------------------------------------------------------------------------
  def __call__(self, batch):
    h_enc, _ = self.encode(batch["bytes"], batch["positions"], batch["segment_ids"])
    word_emb = self.pool_words(h_enc, batch["word_starts"], batch["word_lengths"], batch["positions"],
                               batch["word_positions"])
    out, _ = self.backbone(word_emb, batch["word_positions"], batch["word_segment_ids"])
    guide_words = self.shift_to_next_word(out, batch["word_segment_ids"])
    guide = jnp.take_along_axis(guide_words, batch["word_ids"][..., None], axis=1)  # [B, S, D]
    logits, _ = self.decode(h_enc, guide, batch["positions"], batch["segment_ids"])
    return logits

  def loss_and_metrics(self, batch):
    return losses.next_byte_metrics(self(batch), batch)


class PaperHAT(nn.Module):
  """The paper's design: per-word bidirectional encoder with [W], per-word decoder ending with [W]."""

  cfg: HATConfig

  def setup(self):
    cfg, dtype = self.cfg, self.cfg.jnp_dtype
    self.byte_embed = nn.Embed(VOCAB_SIZE, cfg.encoder.d_model, embedding_init=embed_init(), dtype=dtype)
    self.encoder = Stack(cfg.encoder, MaskSpec(causal=False), cfg.attention_impl, dtype)
    self.to_backbone = nn.Dense(cfg.backbone.d_model, use_bias=False, dtype=dtype,
                                kernel_init=nn.with_logical_partitioning(dense_init(), ("mlp", "embed")))
    self.backbone_stack = Stack(cfg.backbone, MaskSpec(causal=True, window=cfg.backbone.window),
                                cfg.attention_impl, dtype)
    self.backbone_norm = RMSNorm(cfg.backbone.norm_eps, dtype)
    self.to_decoder = nn.Dense(cfg.decoder.d_model, use_bias=False, dtype=dtype,
                               kernel_init=nn.with_logical_partitioning(dense_init(), ("mlp", "embed")))
    self.decoder_embed = nn.Embed(VOCAB_SIZE, cfg.decoder.d_model, embedding_init=embed_init(), dtype=dtype)
    self.decoder = Stack(cfg.decoder, MaskSpec(causal=True), cfg.attention_impl, dtype)
    self.final_norm = RMSNorm(cfg.decoder.norm_eps, dtype)
    self.lm_head = lm_head(VOCAB_SIZE, dtype=dtype)

  def _per_word(self, x):
    """[B, W, L, d] -> [B*W, L, d] with arange positions: each word is its own short sequence."""
    b, w, length = x.shape[:3]
    return x.reshape(b * w, length, *x.shape[3:]), jnp.broadcast_to(jnp.arange(length), (b * w, length))

  # -- stages --------------------------------------------------------------------------------------
  def encode_words(self, byte_ids, byte_mask):
    """Bytes of each word [B, W, M] (+ mask) -> word embeddings [B, W, D]: the [W] state of
    `[W] c_1..c_n`, encoded bidirectionally within the word."""
    b, w, m = byte_ids.shape
    marker = jnp.full((b, w, 1), END_OF_WORD, byte_ids.dtype)
    enc_in, pos = self._per_word(self.byte_embed(jnp.concatenate([marker, byte_ids], axis=2)))
    enc_seg = jnp.concatenate([jnp.ones((b, w, 1), bool), byte_mask], axis=2).reshape(b * w, m + 1).astype(jnp.int32)
    h, _ = self.encoder(enc_in, positions=pos, segment_ids=enc_seg)
    return self.to_backbone(h[:, 0].reshape(b, w, -1))

  def backbone(self, word_emb, word_positions, word_segment_ids, caches=None):
    out, caches = self.backbone_stack(word_emb, positions=word_positions, segment_ids=word_segment_ids, caches=caches)
    return self.backbone_norm(out), caches

  def decode_words(self, prev, byte_ids):
    """Predictive vectors [B, W, D] + bytes [B, W, M] -> logits [B, W, M+1, 256] for `c_1..c_M, [W]`
    from the inputs `[p_{j-1}] c_1..c_M` (causal within the word)."""
    b, w, m = byte_ids.shape
    dec_in, pos = self._per_word(self.decoder_inputs(prev[:, :, None], byte_ids))
    h, _ = self.decoder(dec_in, positions=pos, segment_ids=jnp.ones((b * w, m + 1), jnp.int32))
    return self.lm_head(self.final_norm(h)).astype(jnp.float32).reshape(b, w, m + 1, VOCAB_SIZE)

  def decoder_inputs(self, prev, byte_ids):
    """[p] [..., 1, D] + bytes [..., n] -> the decoder's inputs [..., 1 + n, d_dec]: `[p] c_1..c_n`."""
    return jnp.concatenate([self.to_decoder(prev), self.decoder_embed(byte_ids)], axis=-2)

  def decode_cached(self, dec_in, positions, segment_ids, caches):
    """Generation: decoder inputs [B, T, d_dec] (`decoder_inputs`; position 0 = the word's predictive
    vector, k = its k-th byte) through the per-word decoder with KV caches of M + 1 slots, emptied at
    each new word -> (logits [B, T, 256], caches): row t is `decode_words`' row at that position."""
    h, caches = self.decoder(dec_in, positions=positions, segment_ids=segment_ids, caches=caches)
    return self.lm_head(self.final_norm(h)).astype(jnp.float32), caches

  def __call__(self, batch):
    """Returns (logits [B, W, M+1, 256], targets [B, W, M+1], mask [B, W, M+1])."""
    m = self.cfg.max_word_bytes
    byte_ids, byte_mask = gather_words(batch["bytes"], batch["word_starts"], batch["word_lengths"], m)  # [B, W, M]
    b = byte_ids.shape[0]
    out, _ = self.backbone(self.encode_words(byte_ids, byte_mask), batch["word_positions"], batch["word_segment_ids"])
    prev = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
    predicted_word = jnp.concatenate([jnp.zeros((b, 1), bool),
                                      (batch["word_segment_ids"][:, 1:] == batch["word_segment_ids"][:, :-1])
                                      & (batch["word_segment_ids"][:, 1:] > 0)], axis=1)
    logits = self.decode_words(prev, byte_ids)
    lengths = batch["word_lengths"][..., None]
    slot = jnp.arange(m + 1)
    marker = jnp.full(byte_ids.shape[:2] + (1,), END_OF_WORD, byte_ids.dtype)
    targets = jnp.where(slot == lengths, END_OF_WORD, jnp.concatenate([byte_ids, marker], axis=2))
    mask = (slot <= lengths) & predicted_word[..., None]
    return logits, targets, mask

  def loss_and_metrics(self, batch):
    logits, targets, mask = self(batch)
    return losses.paper_hat_metrics(logits, targets, mask, targets != END_OF_WORD)


def build_hat(cfg: HATConfig) -> nn.Module:
  return PaperHAT(cfg) if cfg.variant == "paper" else HAT(cfg)


def empty_caches(cfg: HATConfig, batch: int, max_bytes: int, max_words: int) -> dict:
  """Preallocated KV caches for the three levels of a tfree or released HAT."""
  return {"encoder": stack_caches(cfg.encoder, batch, max_bytes, cfg.jnp_dtype),
          "backbone": stack_caches(cfg.backbone, batch, max_words, cfg.jnp_dtype),
          "decoder": stack_caches(cfg.decoder, batch, max_bytes, cfg.jnp_dtype)}
