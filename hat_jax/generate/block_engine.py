"""Batched, jitted prefill + decode for the Block Transformer and the decoder-only LM (`DecoderLM`: the
vanilla baseline, the byte baseline).

Both engines preallocate every KV cache (`layers.KVCache`) for the whole generation and run the decode
loop inside one `jax.jit` as a `lax.while_loop`, so a call is one compiled program:

  Block Transformer (`block_generate`)
    prompt [B, T] -> each row left-padded with pad_id to a block boundary (the paper's generate), n_prompt
             = ceil(T / L_B) blocks (see "Ragged prompts").
    prefill: embedder + block decoder over the n_prompt prompt blocks (the only prefill; the token
             decoder never sees prompt bytes). Block cache: n_prompt + n_new - 1 entries, one per block.
    per new block: a fresh token-decoder cache of `token_context` (= prefix + L_B - 1) entries; feed the
             context vectors, then the block's bytes one at a time (L_B sampled bytes); then one block
             decoder step on the new block (except the last). The token cache is re-created every block.
  Decoder LM (`decoder_lm_generate`)
    prefill the prompt into caches of T + num_new - 1 entries, then one token per loop step.

Ragged prompts. `prompt_lengths` [B] says row b's prompt is prompt[b, :prompt_lengths[b]] (the rest of
the row is ignored); by default every row is a whole prompt. Every row must generate what it would
alone, in the same preallocated caches and one program, so a row's padding must be invisible:
  - Block Transformer: each prompt is left-padded with pad_id to its own block boundary, i.e. 0..L_B-1
    pads inside its first block, the same padding the model is trained with (random first-block
    padding, `block_tasks`), so its n_b = ceil(len_b / L_B) blocks sit at block positions 0..n_b-1 as
    if it were alone. Whole pad blocks then fill the row up to n_prompt, with block segment id 0:
    the block cache stores them but does not count them, the first generated block overwrites them,
    and no real block attends to them (segment 0 matches only padding). Prefill reads each row's
    context at its last real block; from then on rows decode in lockstep, each at its own cache length.
    (Left-padding all rows to the longest prompt instead would put more than L_B - 1 pads before a
    short prompt, which the model never saw in training, and shift its block positions.)
  - Decoder LM: the same at token level: tokens after a prompt get segment id 0, the first new token is
    read at each row's last prompt token.
Prompts from Python sequences of different lengths: `hat_jax.data.batching.stack_prompts`, or
`continue_prompts`, which also cuts each row's output at its length.

EOS. With `eos_id` set, a row stops at its first eos_id: everything it generates after that is replaced
by the config's pad_id (0 for a decoder LM without a pad row), and the loop exits once every row has
stopped (checked after each block / byte, on the device). The engines then also return per-row lengths
(generated tokens up to and including eos_id; num_new for a row that never emitted it). With
`eos_id=None` (default; the throughput benchmark) the loop always runs to num_new.

Returns `tokens` [B, num_new], then `lengths` [B] if `eos_id` is set, then `logits` [B, num_new, V]
(the logits each byte was sampled from, which the tests compare with the uncached forward pass) if
`return_logits`; a single array when neither. Logits after a row's EOS are not meaningful. Sampling is
`hat_jax.generate.sampling` (shared with HAT generation); greedy by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.data.batching import stack_prompts
from hat_jax.generate.loop_jit import loop_jit
from hat_jax.generate.sampling import GREEDY, SamplingConfig, sample
from hat_jax.models.block_transformer import BlockTransformer, BlockTransformerConfig
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import empty_caches


def layout_prompt(prompt: jax.Array, prompt_lengths: jax.Array, block_len: int,
                  pad_id: int) -> tuple[jax.Array, jax.Array]:
  """prompt [B, T], prompt_lengths [B] -> tokens [B, n * L_B] (n = ceil(T / L_B)), block segment ids [B, n].

  Row b: prompt[b, :len_b] left-padded with pad_id to a block boundary (the paper's
  preprocess_inputs_for_generation) in its first ceil(len_b / L_B) blocks (segment 1), then pad blocks
  (segment 0). For equal lengths T this is plain left padding of the whole batch.
  """
  total = prompt.shape[1]
  n = -(-total // block_len)
  lengths = prompt_lengths.astype(jnp.int32)[:, None]  # [B, 1]
  src = jnp.arange(n * block_len)[None] - (-lengths) % block_len  # [B, n * L_B]: index into the prompt
  valid = (src >= 0) & (src < lengths)
  tokens = jnp.where(valid, jnp.take_along_axis(prompt, jnp.clip(src, 0, total - 1), axis=1), pad_id)
  segment_ids = (jnp.arange(n)[None] < -(-lengths // block_len)).astype(jnp.int32)
  return tokens.astype(jnp.int32), segment_ids


def _check_inputs(cfg, prompt, prompt_lengths, num_new: int, eos_id: int | None, multiple: int = 1) -> None:
  """Shape checks, and value checks on prompt_lengths where they are concrete (not under an outer jit)."""
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, prompt_len] with prompt_len >= 1, got shape {prompt.shape}.")
  if num_new < 1 or num_new % multiple:
    raise ValueError(f"num_new ({num_new}) must be a positive multiple of {multiple}.")
  if eos_id is not None and not (isinstance(eos_id, int) and 0 <= eos_id < cfg.vocab_size):
    raise ValueError(f"eos_id must be None (no stop) or a token id in [0, {cfg.vocab_size}), got {eos_id!r}.")
  if prompt_lengths is None:
    return
  if np.shape(prompt_lengths) != prompt.shape[:1]:
    raise ValueError(f"prompt_lengths must be [batch] = {prompt.shape[:1]}, got shape {np.shape(prompt_lengths)}.")
  if not isinstance(prompt_lengths, jax.core.Tracer):
    lengths = np.asarray(prompt_lengths)
    if lengths.min() < 1 or lengths.max() > prompt.shape[1]:
      raise ValueError(f"prompt_lengths must be in [1, prompt_len = {prompt.shape[1]}], got {lengths.tolist()}; "
                       "every row needs a non-empty prompt (hat_jax.data.batching.stack_prompts).")


def _lengths(prompt, prompt_lengths) -> jax.Array:
  if prompt_lengths is None:
    return jnp.full(prompt.shape[:1], prompt.shape[1], jnp.int32)
  return jnp.asarray(prompt_lengths, jnp.int32)


def _has_eos(chunk: jax.Array, eos_id: int | None) -> jax.Array:
  """chunk [B, k] -> [B] bool: the chunk holds eos_id (never, when eos_id is None)."""
  return jnp.zeros(chunk.shape[:1], bool) if eos_id is None else jnp.any(chunk == eos_id, axis=1)


def _decode_loop(step, chunk, chunk_logits, state, num_chunks: int, *, eos_id: int | None, pad_id: int,
                 return_logits: bool):
  """The shared decode loop. Chunk 0 (chunk [B, k], chunk_logits [B, k, V]) comes from the prefill;
  chunk i = 1..num_chunks-1 from `chunk, chunk_logits, state = step(i, previous chunk, state)`.

  Outputs are preallocated and written in place, and a `lax.while_loop` stops early once every row has
  emitted eos_id. Returns the engines' result: tokens [B, num_chunks * k] [, lengths [B]] [, logits].
  """
  batch, k = chunk.shape
  out = jnp.full((batch, num_chunks, k), pad_id, jnp.int32).at[:, 0].set(chunk)
  logits = None
  if return_logits:
    logits = jnp.zeros((batch, num_chunks) + chunk_logits.shape[1:], chunk_logits.dtype).at[:, 0].set(chunk_logits)

  def cond(carry):
    i, done = carry[0], carry[-1]
    # Without an EOS the trip count stays static (i < const), as the benchmark's programs need.
    return i < num_chunks if eos_id is None else (i < num_chunks) & ~jnp.all(done)

  def body(carry):
    i, chunk, state, out, logits, done = carry
    chunk, chunk_logits, state = step(i, chunk, state)
    out = jax.lax.dynamic_update_index_in_dim(out, chunk, i, axis=1)
    if logits is not None:
      logits = jax.lax.dynamic_update_index_in_dim(logits, chunk_logits, i, axis=1)
    return i + 1, chunk, state, out, logits, done | _has_eos(chunk, eos_id)

  carry = (jnp.int32(1), chunk, state, out, logits, _has_eos(chunk, eos_id))
  _, _, _, out, logits, _ = jax.lax.while_loop(cond, body, carry)
  tokens = out.reshape(batch, num_chunks * k)
  result = (tokens,)
  if eos_id is not None:
    is_eos = tokens == eos_id
    lengths = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, tokens.shape[1]).astype(jnp.int32)
    result = (jnp.where(jnp.arange(tokens.shape[1])[None] < lengths[:, None], tokens, pad_id), lengths)
  if return_logits:
    result += (logits.reshape(batch, num_chunks * k, -1),)
  return result[0] if len(result) == 1 else result


_STATIC = ("cfg", "num_new", "sampling", "eos_id", "return_logits")


@loop_jit(static_argnames=_STATIC)
def _block_generate(cfg: BlockTransformerConfig, params, prompt, prompt_lengths, rng, *, num_new, sampling,
                    eos_id, return_logits):
  model = BlockTransformer(cfg)
  L = cfg.block_len
  tokens, block_segments = layout_prompt(prompt, prompt_lengths, L, cfg.pad_id)
  batch, n_prompt = block_segments.shape
  n_new = num_new // L

  caches = empty_caches(cfg.block_decoder, batch, n_prompt + n_new - 1, cfg.jnp_dtype)
  ctx, caches = model.apply(params, tokens.reshape(batch, n_prompt, L), caches, segment_ids=block_segments,
                            method=model.block_step)
  rngs = jax.random.split(rng, n_new)

  def decode_block(ctx, rng):
    """context [B, D] -> block bytes [B, L_B], their logits [B, L_B, V] (None unless return_logits)."""
    caches = empty_caches(cfg.token_decoder, batch, cfg.token_context, cfg.jnp_dtype)  # reset every block
    rngs = jax.random.split(rng, L)
    ctx_vecs, logits, caches = model.apply(params, ctx, caches, method=model.token_first)
    all_logits, byte = [logits], sample(logits, rngs[0], sampling)
    all_bytes = [byte]
    for k in range(1, L):
      logits, caches = model.apply(params, ctx_vecs, byte, k, caches, method=model.token_next)
      byte = sample(logits, rngs[k], sampling)
      all_logits.append(logits)
      all_bytes.append(byte)
    return jnp.stack(all_bytes, 1), (jnp.stack(all_logits, 1) if return_logits else None)

  def step(i, block, caches):
    """Feed block i-1 [B, L_B] to the block decoder, decode block i."""
    ctx, caches = model.apply(params, block[:, None], caches, method=model.block_step)
    return *decode_block(ctx, rngs[i]), caches

  return _decode_loop(step, *decode_block(ctx, rngs[0]), caches, n_new, eos_id=eos_id, pad_id=cfg.pad_id,
                      return_logits=return_logits)


@loop_jit(static_argnames=_STATIC)
def _decoder_lm_generate(cfg: DecoderLMConfig, params, prompt, prompt_lengths, rng, *, num_new, sampling, eos_id,
                         return_logits):
  model = DecoderLM(cfg)
  batch, prompt_len = prompt.shape
  caches = empty_caches(cfg.decoder, batch, prompt_len + num_new - 1, cfg.jnp_dtype)
  segment_ids = (jnp.arange(prompt_len)[None] < prompt_lengths[:, None]).astype(jnp.int32)
  logits, caches = model.apply(params, prompt.astype(jnp.int32), segment_ids=segment_ids, caches=caches)
  logits = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)  # [B, 1, V]
  rngs = jax.random.split(rng, num_new)

  def step(i, token, caches):
    """Feed token i-1 [B, 1], sample token i."""
    logits, caches = model.apply(params, token, caches=caches)
    return sample(logits, rngs[i], sampling), logits, caches

  return _decode_loop(step, sample(logits, rngs[0], sampling), logits, caches, num_new, eos_id=eos_id,
                      pad_id=cfg.pad_id, return_logits=return_logits)


def block_generate(cfg: BlockTransformerConfig, params, prompt: jax.Array, rng: jax.Array, *, num_new: int,
                   prompt_lengths: jax.Array | None = None, sampling: SamplingConfig = GREEDY,
                   eos_id: int | None = None, return_logits: bool = False):
  """prompt [B, T] int32 -> generated bytes [B, num_new] (num_new a multiple of L_B) [, lengths] [, logits]."""
  _check_inputs(cfg, prompt, prompt_lengths, num_new, eos_id, cfg.block_len)
  return _block_generate(cfg, params, jnp.asarray(prompt, jnp.int32), _lengths(prompt, prompt_lengths), rng,
                         num_new=num_new, sampling=sampling, eos_id=eos_id, return_logits=return_logits)


def decoder_lm_generate(cfg: DecoderLMConfig, params, prompt: jax.Array, rng: jax.Array, *, num_new: int,
                        prompt_lengths: jax.Array | None = None, sampling: SamplingConfig = GREEDY,
                        eos_id: int | None = None, return_logits: bool = False):
  """prompt [B, T] int32 -> generated tokens [B, num_new] [, lengths [B]] [, logits [B, num_new, V]]."""
  _check_inputs(cfg, prompt, prompt_lengths, num_new, eos_id)
  return _decoder_lm_generate(cfg, params, jnp.asarray(prompt, jnp.int32), _lengths(prompt, prompt_lengths), rng,
                              num_new=num_new, sampling=sampling, eos_id=eos_id, return_logits=return_logits)


def generate(cfg, params, prompt, rng, *, num_new: int, prompt_lengths: jax.Array | None = None,
             sampling: SamplingConfig = GREEDY, eos_id: int | None = None, return_logits: bool = False):
  """Dispatch on the config type (BlockTransformerConfig or DecoderLMConfig)."""
  if isinstance(cfg, BlockTransformerConfig):
    fn = block_generate
  elif isinstance(cfg, DecoderLMConfig):
    fn = decoder_lm_generate
  else:
    raise TypeError(f"generate() needs a BlockTransformerConfig or DecoderLMConfig, got {type(cfg).__name__}.")
  return fn(cfg, params, prompt, rng, num_new=num_new, prompt_lengths=prompt_lengths, sampling=sampling,
            eos_id=eos_id, return_logits=return_logits)


def continue_prompts(cfg, params, prompts: Sequence[Sequence[int] | bytes], rng: jax.Array, *, num_new: int,
                     sampling: SamplingConfig = GREEDY, eos_id: int | None = None) -> list[np.ndarray]:
  """Prompts of any lengths (bytes or token lists) -> each row's generated tokens (int32, up to and
  including eos_id when it stops there), from one `generate` call over the whole batch."""
  prompt, lengths = stack_prompts(prompts, cfg.pad_id)
  out = generate(cfg, params, prompt, rng, num_new=num_new, prompt_lengths=lengths, sampling=sampling,
                 eos_id=eos_id)
  tokens, kept = out if eos_id is not None else (out, np.full(len(prompts), num_new))
  return [row[:n] for row, n in zip(np.asarray(tokens), np.asarray(kept))]


def decoder_lm_steps(cfg: DecoderLMConfig, batch_size: int, max_len: int) -> dict[str, tuple]:
  """`decoder_lm_generate`'s device step by shape, for `Task.decode_steps`: "token" = one token through the
  decoder, with caches of `max_len` entries (a training row)."""
  model = DecoderLM(cfg)
  caches = jax.eval_shape(lambda: empty_caches(cfg.decoder, batch_size, max_len, cfg.jnp_dtype))
  return {"token": (lambda params, tokens, caches: model.apply(params, tokens, caches=caches),
                    (jax.ShapeDtypeStruct((batch_size, 1), jnp.int32), caches))}
