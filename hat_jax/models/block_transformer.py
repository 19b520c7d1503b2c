"""Block Transformer (Ho et al. 2024, arXiv:2406.02657) over bytes.

Read top to bottom like the paper's Figure 1:

  tokens [B, S] (S = N blocks * L_B, block-aligned, see `hat_jax.data.blocks`)
    -> LookupConcatEmbedder     each block of L_B bytes -> one [D] vector (L_B lookups of D/L_B, concat)
    -> block decoder (Stack)    causal over the N block embeddings -> context embeddings [B, N, D]
    -> TokenDecoder             block j+1 is decoded from the context of block j only; blocks are
                                reshaped into the batch ([B*(N-1), ...]) so it attends only within its
                                block, never over a long masked sequence.
  Conditioning of the token decoder (`decoding`):
    "prefix"           context -> `prefix_len` vectors prepended to the block's tokens (paper default, 2)
    "summation"        context -> L_B vectors added to the (shifted) token embeddings (MEGABYTE-style)
    "cross_attention"  context -> L_B vectors cross-attended by every token-decoder layer

Tokens are bytes: `vocab_size` = 256 output classes. Input embedding tables have one extra row,
`pad_id = vocab_size`, used for block padding (random first-block padding, end-of-document padding,
left padding of prompts) and as the start token of the summation / cross-attention decoders; the pad
id is never a prediction target. `vocab_pad_to_multiple` rounds the input tables up further (257 ->
264 for 8) so their "vocab" dim shards over the tensor-parallel mesh axis; the extra rows are never
looked up, and the output heads stay at `vocab_size` rows, so they are never predicted either.

Block j's L_B tokens are predicted from the context of blocks 0..j-1, so block 0 of a row is never a
target (the paper's training rule); `BlockTransformer.__call__` returns logits for blocks 1..N-1.

The token-level baseline of the same family (same RMSNorm / RoPE / SwiGLU / GQA layers) is
`hat_jax.models.decoder_lm.DecoderLM` with a pad row (task "vanilla_lm").

The model exposes step methods with explicit KV caches for `hat_jax.generate.block_engine`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec
from hat_jax.models.layers import (
    Block, KVCache, Layer, RMSNorm, Stack, StackConfig, TokenVocab, caches_length, dataclass_from_config, dense_init,
    embed_init, lm_head, stack_mask)

DECODINGS = ("prefix", "summation", "cross_attention")


def _logical(init, axes):
  return nn.with_logical_partitioning(init, axes)


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockTransformerConfig(TokenVocab):
  """Shapes of a Block Transformer. D_emb = block_decoder.d_model / block_len (lookup + concat)."""

  block_decoder: StackConfig
  token_decoder: StackConfig
  block_len: int = 4  # L_B
  prefix_len: int = 2  # prefix vectors per context embedding ("prefix" decoding)
  decoding: str = "prefix"
  vocab_size: int = 256  # bytes
  # Input tables get round_up(vocab_size + 1, this) rows. 1 keeps 257 rows (older params load
  # unchanged); the configs use 8, which tensor-parallel sizes 2, 4 and 8 divide.
  vocab_pad_to_multiple: int = 1
  attention_impl: str = "auto"
  dtype: str = "float32"  # compute dtype ("bfloat16" with float32 params = mixed precision)
  # Always: `pad_id = vocab_size` pads blocks (first-block, end-of-document and prompt padding) and is the
  # start token of the summation / cross-attention token decoders. Not a field (nothing to configure).
  pad_row = True

  def __post_init__(self):
    self.check_vocab()
    if not isinstance(self.block_len, int) or self.block_len < 1:
      raise ValueError(f"block_len (L_B) must be a positive int, got {self.block_len!r}.")
    if self.decoding not in DECODINGS:
      raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}.")
    if self.decoding == "prefix" and (not isinstance(self.prefix_len, int) or self.prefix_len < 1):
      raise ValueError(f"prefix_len must be a positive int for prefix decoding, got {self.prefix_len!r}.")
    if self.block_decoder.d_model % self.block_len:
      raise ValueError(
          f"block_decoder.d_model ({self.block_decoder.d_model}) must be divisible by block_len "
          f"({self.block_len}): the lookup+concat embedder uses D_emb = d_model / block_len per byte.")
    if self.block_decoder.window is not None or self.token_decoder.window is not None:
      raise ValueError("Block Transformer decoders use full causal attention; set window=None.")

  @property
  def token_context(self) -> int:
    """Token-decoder sequence length per block (also its KV-cache size): prefix + L_B - 1, or L_B."""
    return self.prefix_len + self.block_len - 1 if self.decoding == "prefix" else self.block_len

  @property
  def first_step_len(self) -> int:
    """Token-decoder positions fed before the first byte of a block can be read off."""
    return self.prefix_len if self.decoding == "prefix" else 1

  @classmethod
  def from_config(cls, cfg) -> "BlockTransformerConfig":
    return dataclass_from_config(cls, cfg, "Block Transformer", stacks=("block_decoder", "token_decoder"))


def _check_tokens(tokens: jax.Array, block_len: int) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, seq_len], got shape {tokens.shape}.")
  if tokens.shape[1] % block_len:
    raise ValueError(
        f"seq_len ({tokens.shape[1]}) must be a multiple of block_len ({block_len}); lay rows out "
        "with hat_jax.data.blocks.block_align or left-pad prompts with pad_id.")


# --------------------------------------------------------------------------------------------------
# 1. Embedder: lookup + concat
# --------------------------------------------------------------------------------------------------


class LookupConcatEmbedder(nn.Module):
  """[B, N, L_B] byte ids -> [B, N, D]: each byte looks up D/L_B dims, the L_B lookups are concatenated."""

  vocab_size: int  # table rows: including pad_id (and any rows padding it to a multiple)
  d_model: int
  block_len: int

  @nn.compact
  def __call__(self, blocks: jax.Array) -> jax.Array:
    table = self.param("embedding", embed_init(), (self.vocab_size, self.d_model // self.block_len))
    emb = jnp.take(table, blocks, axis=0)  # [B, N, L_B, D/L_B]
    return emb.reshape(*blocks.shape[:-1], self.d_model)


# --------------------------------------------------------------------------------------------------
# 3. Token decoder (2., the block decoder, is a plain `Stack` + final norm inside BlockTransformer)
# --------------------------------------------------------------------------------------------------


class CrossAttentionLayer(Layer):
  """Pre-norm decoder layer: causal self-attention, cross-attention to the context vectors (`context`
  [B', n_ctx, D_tok]), SwiGLU."""

  @nn.compact
  def __call__(self, x, positions, segment_ids, context, cache: KVCache | None = None):
    h, cache = self.attention(mask=MaskSpec(causal=True))(self.norm("attn_norm")(x), positions=positions,
                                                          segment_ids=segment_ids, cache=cache)
    x = x + h
    ctx_pos = jnp.zeros(context.shape[:2], jnp.int32)
    h, _ = self.attention("cross_attn", mask=MaskSpec(causal=False), rope_theta=None, mask_by_index=False)(
        self.norm("cross_norm")(x), positions=positions, segment_ids=jnp.ones_like(segment_ids), x_kv=context,
        kv_positions=ctx_pos, kv_segment_ids=jnp.ones_like(ctx_pos))
    x = x + h
    x = x + self.mlp()(self.norm("mlp_norm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class TokenDecoder(nn.Module):
  """Decodes one block from one context embedding. Blocks are independent rows of the batch ([B', ...]).

  The input sequence of a block (length T = cfg.token_context) is built from its context vectors
  (`context_vectors`, computed once per block) and the block's bytes; `decode` runs the layers on any
  slice [start, start + n) of it with an optional per-block KV cache. Training feeds the whole sequence
  at once (`__call__`); generation feeds `first_inputs`, then `next_input` one byte at a time.
  """

  cfg: BlockTransformerConfig

  def setup(self):
    cfg, tok, dtype = self.cfg, self.cfg.token_decoder, self.cfg.jnp_dtype
    self.embed = nn.Embed(cfg.input_vocab_size, tok.d_model, embedding_init=embed_init(), dtype=dtype, name="embed")
    n_ctx = cfg.prefix_len if cfg.decoding == "prefix" else cfg.block_len
    # Conv1d(kernel=1) of the paper == a Dense to n_ctx * D_tok, reshaped to n_ctx vectors.
    d_block = cfg.block_decoder.d_model
    self.context_kernel = self.param("context_kernel", _logical(dense_init(), ("embed", None, None)),
                                     (d_block, n_ctx, tok.d_model))
    self.context_bias = self.param("context_bias", _logical(nn.initializers.zeros, (None, None)),
                                   (n_ctx, tok.d_model))
    layer = CrossAttentionLayer if cfg.decoding == "cross_attention" else Block
    self.stack = Stack(tok, stack_mask(tok), cfg.attention_impl, dtype, layer=layer, name="stack")
    self.final_norm = RMSNorm(tok.norm_eps, dtype, name="final_norm")
    self.head = lm_head(cfg.vocab_size, dtype=dtype, name="head")

  def context_vectors(self, context: jax.Array) -> jax.Array:
    """context [B', D_block] -> [B', n_ctx, D_tok] (prefix_len prefix vectors, or L_B vectors)."""
    dtype = self.cfg.jnp_dtype
    return (jnp.einsum("bd,dpe->bpe", context.astype(dtype), self.context_kernel.astype(dtype))
            + self.context_bias.astype(dtype))

  def first_inputs(self, ctx_vecs: jax.Array) -> jax.Array:
    """Inputs before the block's first byte: the prefix [P_1..P_p], or the start token <s> (+ ctx_1)."""
    if self.cfg.decoding == "prefix":
      return ctx_vecs
    start = self.embed(jnp.full(ctx_vecs.shape[:1] + (1,), self.cfg.pad_id, jnp.int32))
    return start + ctx_vecs[:, :1] if self.cfg.decoding == "summation" else start

  def next_input(self, ctx_vecs: jax.Array, byte: jax.Array, k: int) -> jax.Array:
    """Input carrying the block's k-th byte (k = 1..L_B-1), byte [B'] -> [B', 1, D_tok]."""
    x = self.embed(byte[:, None])
    return x + ctx_vecs[:, k:k + 1] if self.cfg.decoding == "summation" else x

  def inputs(self, ctx_vecs: jax.Array, prev: jax.Array) -> jax.Array:
    """Whole-block inputs [B', T, D_tok] from prev [B', L_B - 1] = the block's bytes but the last."""
    x = self.embed(prev)
    if self.cfg.decoding == "summation":
      x = x + ctx_vecs[:, 1:]
    return jnp.concatenate([self.first_inputs(ctx_vecs), x], axis=1)

  def decode(self, x, ctx_vecs, *, start: int = 0, caches: tuple[KVCache, ...] | None = None):
    """x [B', n, D_tok] at positions [start, start + n) -> logits [B', n, V], caches."""
    batch, length = x.shape[:2]
    positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32)[None], (batch, length))
    segment_ids = jnp.ones((batch, length), jnp.int32)
    context = ctx_vecs if self.cfg.decoding == "cross_attention" else None
    x, caches = self.stack(x, positions=positions, segment_ids=segment_ids, caches=caches, context=context)
    return self.head(self.final_norm(x)).astype(jnp.float32), caches

  def __call__(self, context: jax.Array, prev: jax.Array) -> jax.Array:
    """Teacher-forced: context [B', D_block], prev [B', L_B - 1] -> logits [B', T, V]."""
    ctx_vecs = self.context_vectors(context)
    return self.decode(self.inputs(ctx_vecs, prev), ctx_vecs)[0]


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------


class BlockTransformer(nn.Module):
  cfg: BlockTransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = LookupConcatEmbedder(cfg.input_vocab_size, cfg.block_decoder.d_model, cfg.block_len,
                                         name="embedder")
    self.block_decoder = Stack(cfg.block_decoder, stack_mask(cfg.block_decoder), cfg.attention_impl, cfg.jnp_dtype,
                               name="block_decoder")
    self.block_norm = RMSNorm(cfg.block_decoder.norm_eps, cfg.jnp_dtype, name="block_norm")
    self.token_decoder = TokenDecoder(cfg, name="token_decoder")

  def contexts(self, blocks, *, positions, segment_ids, caches=None):
    """blocks [B, N, L_B], positions/segment_ids [B, N] (block level) -> context embeddings [B, N, D]."""
    x = self.embedder(blocks).astype(self.cfg.jnp_dtype)
    x, caches = self.block_decoder(x, positions=positions, segment_ids=segment_ids, caches=caches)
    return self.block_norm(x), caches

  def __call__(self, tokens, *, segment_ids=None, positions=None):
    """tokens [B, S] -> logits [B, N-1, L_B, V] for blocks 1..N-1 (block j from contexts of blocks < j).

    segment_ids / positions [B, S] are token level and block aligned (constant segment within a block;
    positions are within-document, so the block position is positions // L_B).
    """
    cfg = self.cfg
    _check_tokens(tokens, cfg.block_len)
    batch, seq_len = tokens.shape
    n = seq_len // cfg.block_len
    if n < 2:
      raise ValueError(f"need at least 2 blocks (seq_len >= {2 * cfg.block_len}) to have a target block.")
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32)[None], tokens.shape)
    blocks = tokens.reshape(batch, n, cfg.block_len)
    ctx, _ = self.contexts(blocks, positions=positions[:, ::cfg.block_len] // cfg.block_len,
                           segment_ids=segment_ids[:, ::cfg.block_len])
    # Context of block j decodes block j+1; blocks go into the batch.
    ctx = ctx[:, :-1].reshape(batch * (n - 1), -1)
    targets = blocks[:, 1:].reshape(batch * (n - 1), cfg.block_len)
    logits = self.token_decoder(ctx, targets[:, :-1])  # [B*(N-1), T, V]
    logits = logits[:, -cfg.block_len:]  # outputs at P_p, t_1..t_{L_B-1} (prefix) or all L_B positions
    return logits.reshape(batch, n - 1, cfg.block_len, -1)

  # -- generation steps (used by hat_jax.generate.block_engine) ---------------------------------------

  def block_step(self, blocks, caches, *, segment_ids=None):
    """Feed blocks [B, n, L_B] to the block decoder at positions cache.length.. -> context [B, D] of
    each row's last real block.

    segment_ids [B, n] (default all 1): 1 for real blocks, 0 for padding blocks, which must follow a
    row's real ones (ragged prompts); the cache stores padding but does not count it, so the next
    step overwrites it and no real block ever attends to it (`KVCache.append`).
    """
    batch, n, _ = blocks.shape
    start = caches_length(caches)[:, None]
    positions = start + jnp.arange(n, dtype=jnp.int32)[None]
    if segment_ids is None:
      segment_ids = jnp.ones((batch, n), jnp.int32)
    ctx, caches = self.contexts(blocks, positions=positions, segment_ids=segment_ids, caches=caches)
    last = jnp.sum(segment_ids != 0, axis=1) - 1  # [B]
    return jnp.take_along_axis(ctx, last[:, None, None], axis=1)[:, 0], caches

  def token_first(self, context, caches):
    """Start a block: context [B, D] -> (context vectors, logits for its first byte [B, V], caches)."""
    td = self.token_decoder
    ctx_vecs = td.context_vectors(context)
    logits, caches = td.decode(td.first_inputs(ctx_vecs), ctx_vecs, start=0, caches=caches)
    return ctx_vecs, logits[:, -1], caches

  def token_next(self, ctx_vecs, byte, k: int, caches):
    """Feed the block's k-th byte [B] (k = 1..L_B-1) -> logits for byte k+1 [B, V], caches."""
    td = self.token_decoder
    start = self.cfg.first_step_len + k - 1
    logits, caches = td.decode(td.next_input(ctx_vecs, byte, k), ctx_vecs, start=start, caches=caches)
    return logits[:, -1], caches
