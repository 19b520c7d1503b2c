"""Generation engines: cached generation equals the uncached forward pass; padding; sampling; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.data.batching import stack_prompts
from hat_jax.generate.block_engine import (
    block_generate, continue_prompts, decoder_lm_generate, generate, layout_prompt)
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models.block_transformer import DECODINGS, BlockTransformer, BlockTransformerConfig
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import StackConfig
from tests import jit_helpers

L = 4


def stack(d, layers=2):
  return StackConfig(d_model=d, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=2 * d)


def block_setup(decoding):
  cfg = BlockTransformerConfig(stack(16), stack(16), decoding=decoding)
  model = BlockTransformer(cfg)
  return cfg, model, jit_helpers.init(model, jax.random.key(0), jnp.zeros((1, 2 * L), jnp.int32))


def decoder_setup(pad_row=True):
  """The vanilla baseline's shape (with the pad row) or the byte baseline's (without)."""
  cfg = DecoderLMConfig(stack(16), pad_row=pad_row)
  model = DecoderLM(cfg)
  return cfg, model, jit_helpers.init(model, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def prompt(batch=2, length=7, seed=3):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, 256, jnp.int32)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_block_cached_generation_equals_uncached_logits(decoding):
  cfg, model, params = block_setup(decoding)
  p = prompt()  # 7 bytes: left-padded to 8 = 2 prompt blocks
  out, logits = block_generate(cfg, params, p, jax.random.key(1), num_new=3 * L, return_logits=True)
  assert out.shape == (2, 3 * L) and logits.shape == (2, 3 * L, 256)
  padded, _ = layout_prompt(p, jnp.full((2,), 7), L, cfg.pad_id)
  full = jnp.concatenate([padded, out], axis=1)  # [2, 20]
  ref = jit_helpers.apply(model, params, full).reshape(2, -1, 256)[:, -3 * L:]  # predictions of the generated blocks
  np.testing.assert_allclose(logits, ref, atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(out, np.argmax(np.asarray(ref), axis=-1))  # greedy


def test_decoder_lm_cached_generation_equals_uncached_logits():
  cfg, model, params = decoder_setup()
  p = prompt(length=5)
  out, logits = decoder_lm_generate(cfg, params, p, jax.random.key(1), num_new=6, return_logits=True)
  ref, _ = jit_helpers.apply(model, params, jnp.concatenate([p, out], axis=1))
  np.testing.assert_allclose(logits, ref[:, 4:-1], atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(out, np.argmax(np.asarray(ref[:, 4:-1]), axis=-1))


def test_generate_inside_a_users_jit_is_the_same_program():
  """The engines compile with loop_jit's compiler options, which jax accepts only on the outermost jit:
  wrapped in another jit (as experiments/block_throughput compiles it), generate must still run, and
  compute the same."""
  cfg, _, params = decoder_setup()
  p = prompt(length=5)
  direct = decoder_lm_generate(cfg, params, p, jax.random.key(1), num_new=6, return_logits=True)
  wrapped = jax.jit(lambda params, p: generate(cfg, params, p, jax.random.key(1), num_new=6, return_logits=True))
  for got, want in zip(wrapped(params, p), direct):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_layout_prompt_left_pads_each_row_to_its_block_boundary():
  p = jnp.broadcast_to(jnp.arange(6), (3, 6))
  tokens, segments = layout_prompt(p, jnp.array([6, 4, 1]), L, 256)
  np.testing.assert_array_equal(tokens, [[256, 256, 0, 1, 2, 3, 4, 5],  # 2 pads, then the whole prompt
                                         [0, 1, 2, 3] + [256] * 4,  # one block, then a pad block
                                         [256] * 3 + [0] + [256] * 4])
  np.testing.assert_array_equal(segments, [[1, 1], [1, 0], [1, 0]])


def test_sampled_generation_is_seeded_and_in_range():
  cfg, _, params = block_setup("prefix")
  sampling = SamplingConfig(temperature=1.0, top_k=50)
  a = generate(cfg, params, prompt(), jax.random.key(7), num_new=2 * L, sampling=sampling)
  b = generate(cfg, params, prompt(), jax.random.key(7), num_new=2 * L, sampling=sampling)
  c = generate(cfg, params, prompt(), jax.random.key(8), num_new=2 * L, sampling=sampling)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == jnp.int32 and np.all((np.asarray(a) >= 0) & (np.asarray(a) < 256))


def test_engine_errors():
  cfg, _, params = block_setup("prefix")
  with pytest.raises(ValueError, match="multiple of 4"):
    block_generate(cfg, params, prompt(), jax.random.key(0), num_new=6)
  with pytest.raises(ValueError, match="prompt must be"):
    block_generate(cfg, params, jnp.zeros((2, 0), jnp.int32), jax.random.key(0), num_new=4)
  with pytest.raises(ValueError, match=r"prompt_lengths must be in \[1, prompt_len = 7\], got \[0, 7\]"):
    block_generate(cfg, params, prompt(), jax.random.key(0), num_new=4, prompt_lengths=np.array([0, 7]))
  with pytest.raises(ValueError, match=r"prompt_lengths must be \[batch\]"):
    block_generate(cfg, params, prompt(), jax.random.key(0), num_new=4, prompt_lengths=np.array([7]))
  with pytest.raises(ValueError, match=r"eos_id must be None .* in \[0, 256\)"):
    block_generate(cfg, params, prompt(), jax.random.key(0), num_new=4, eos_id=256)
  with pytest.raises(TypeError, match="BlockTransformerConfig or DecoderLMConfig"):
    generate(object(), params, prompt(), jax.random.key(0), num_new=4)


# -- ragged prompts and EOS ---------------------------------------------------------------------------


RAGGED = [b"abcdefghi", b"xy", b"12345"]  # 3 blocks, 1 block (+ 2 pad blocks), 2 blocks (+ 1 pad block)


def test_block_ragged_prompts_generate_as_if_alone_and_match_uncached_logits():
  cfg, model, params = block_setup("prefix")
  prompt, lengths = stack_prompts(RAGGED, cfg.pad_id)
  num_new = 2 * L
  out, logits = block_generate(cfg, params, prompt, jax.random.key(1), num_new=num_new, prompt_lengths=lengths,
                               return_logits=True)
  # Uncached reference: each row = its block-aligned prompt + its generated bytes, padding blocks after
  # it in their own segment 0 (as block_tasks lays out rows).
  tokens, segments = layout_prompt(jnp.asarray(prompt), jnp.asarray(lengths), L, cfg.pad_id)
  n_real = np.asarray(segments).sum(1)  # [B] prompt blocks per row
  rows = np.full((len(RAGGED), tokens.shape[1] + num_new), cfg.pad_id, np.int32)
  segment_ids = np.zeros_like(rows)
  for b, n in enumerate(n_real):
    rows[b, :n * L] = np.asarray(tokens)[b, :n * L]
    rows[b, n * L:(n + 2) * L] = out[b]
    segment_ids[b, :(n + 2) * L] = 1
  ref = jit_helpers.apply(model, params, jnp.asarray(rows), segment_ids=jnp.asarray(segment_ids))  # [B, N-1, L, V]
  for b, n in enumerate(n_real):
    row_ref = np.asarray(ref[b, n - 1:n + 1]).reshape(num_new, -1)  # blocks n, n+1 from contexts n-1, n
    np.testing.assert_allclose(logits[b], row_ref, atol=2e-5, rtol=1e-5)
    alone = block_generate(cfg, params, prompt[b:b + 1, :lengths[b]], jax.random.key(1), num_new=num_new)
    np.testing.assert_array_equal(out[b], alone[0])


@pytest.mark.parametrize("pad_row", [True, False], ids=["vanilla", "bytes"])
def test_decoder_lm_ragged_prompts_generate_as_if_alone_and_match_uncached_logits(pad_row):
  cfg, model, params = decoder_setup(pad_row)
  prompt, lengths = stack_prompts([b"abcdef", b"x", b"xyz"], cfg.pad_id)
  out, logits = decoder_lm_generate(cfg, params, prompt, jax.random.key(1), num_new=5, prompt_lengths=lengths,
                                    return_logits=True)
  for b, n in enumerate(lengths):
    full = jnp.concatenate([prompt[b:b + 1, :n], out[b:b + 1]], axis=1)
    ref, _ = jit_helpers.apply(model, params, full)
    np.testing.assert_allclose(logits[b], ref[0, n - 1:-1], atol=2e-5, rtol=1e-5)
    alone = decoder_lm_generate(cfg, params, prompt[b:b + 1, :n], jax.random.key(1), num_new=5)
    np.testing.assert_array_equal(out[b], alone[0])


@pytest.mark.parametrize("model_kind", ["block", "vanilla", "bytes"])
def test_eos_stops_rows_and_returns_lengths(model_kind):
  if model_kind == "block":
    cfg, _, params = block_setup("prefix")
  else:
    cfg, _, params = decoder_setup(pad_row=model_kind == "vanilla")
  p, num_new = prompt(batch=3, length=5), 3 * L
  full = np.asarray(generate(cfg, params, p, jax.random.key(1), num_new=num_new))
  eos = int(full[0, 5])  # row 0 stops at byte 5 or earlier; the others wherever (if ever) they emit it
  out, lengths = generate(cfg, params, p, jax.random.key(1), num_new=num_new, eos_id=eos)
  for b in range(3):
    hits = np.flatnonzero(full[b] == eos)
    n = hits[0] + 1 if hits.size else num_new
    assert lengths[b] == n
    np.testing.assert_array_equal(out[b, :n], full[b, :n])  # greedy: the same bytes up to the stop
    np.testing.assert_array_equal(out[b, n:], cfg.pad_id)


def test_eos_exits_the_loop_early():
  """When every row has stopped, no later block is decoded: its logits stay unwritten (zero)."""
  cfg, _, params = block_setup("prefix")
  p = jnp.broadcast_to(prompt(batch=1), (2, 7))
  full = block_generate(cfg, params, p, jax.random.key(1), num_new=3 * L)
  out, lengths, logits = block_generate(cfg, params, p, jax.random.key(1), num_new=3 * L, eos_id=int(full[0, 0]),
                                        return_logits=True)
  np.testing.assert_array_equal(lengths, [1, 1])
  np.testing.assert_array_equal(out[:, 1:], cfg.pad_id)
  assert np.abs(np.asarray(logits[:, :L])).min() > 0  # block 0 decoded
  np.testing.assert_array_equal(logits[:, L:], 0.0)  # blocks 1, 2 never run


@pytest.mark.parametrize("model_kind", ["block", "bytes"])
def test_continue_prompts_cuts_each_row_at_its_length(model_kind):
  cfg, _, params = block_setup("prefix") if model_kind == "block" else decoder_setup(pad_row=False)
  prompts, num_new = [b"abcdefghi", b"xy"], 2 * L
  prompt, lengths = stack_prompts(prompts, cfg.pad_id)
  full = np.asarray(generate(cfg, params, prompt, jax.random.key(1), num_new=num_new, prompt_lengths=lengths))
  outs = continue_prompts(cfg, params, prompts, jax.random.key(1), num_new=num_new)
  assert [o.tolist() for o in outs] == full.tolist()
  eos = int(full[1, 2])
  stopped = continue_prompts(cfg, params, prompts, jax.random.key(1), num_new=num_new, eos_id=eos)
  for row, out in zip(full, stopped):
    hits = np.flatnonzero(row == eos)
    np.testing.assert_array_equal(out, row[:hits[0] + 1] if hits.size else row)
