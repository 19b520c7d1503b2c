"""Generation engines: cached generation equals the uncached forward pass; padding; sampling; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.generate.block_engine import block_generate, generate, left_pad, vanilla_generate
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models.block_transformer import (
    DECODINGS, BlockTransformer, BlockTransformerConfig, VanillaConfig, VanillaLM)
from hat_jax.models.layers import StackConfig
from tests import jit_helpers

L = 4


def stack(d, layers=2):
  return StackConfig(d_model=d, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=2 * d)


def block_setup(decoding):
  cfg = BlockTransformerConfig(stack(16), stack(16), decoding=decoding)
  model = BlockTransformer(cfg)
  return cfg, model, jit_helpers.init(model, jax.random.key(0), jnp.zeros((1, 2 * L), jnp.int32))


def prompt(batch=2, length=7, seed=3):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, 256, jnp.int32)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_block_cached_generation_equals_uncached_logits(decoding):
  cfg, model, params = block_setup(decoding)
  p = prompt()  # 7 bytes: left-padded to 8 = 2 prompt blocks
  out, logits = block_generate(cfg, params, p, jax.random.key(1), num_new=3 * L, return_logits=True)
  assert out.shape == (2, 3 * L) and logits.shape == (2, 3 * L, 256)
  full = jnp.concatenate([left_pad(p, L, cfg.pad_id), out], axis=1)  # [2, 20]
  ref = jit_helpers.apply(model, params, full).reshape(2, -1, 256)[:, -3 * L:]  # predictions of the generated blocks
  np.testing.assert_allclose(logits, ref, atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(out, np.argmax(np.asarray(ref), axis=-1))  # greedy


def test_vanilla_cached_generation_equals_uncached_logits():
  cfg = VanillaConfig(stack(16))
  model = VanillaLM(cfg)
  params = jit_helpers.init(model, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  p = prompt(length=5)
  out, logits = vanilla_generate(cfg, params, p, jax.random.key(1), num_new=6, return_logits=True)
  ref, _ = jit_helpers.apply(model, params, jnp.concatenate([p, out], axis=1))
  np.testing.assert_allclose(logits, ref[:, 4:-1], atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(out, np.argmax(np.asarray(ref[:, 4:-1]), axis=-1))


def test_left_pad_to_block_multiple():
  p = jnp.arange(6)[None]
  np.testing.assert_array_equal(left_pad(p, L, 256), [[256, 256, 0, 1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(left_pad(p[:, :4], L, 256), p[:, :4])


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
  with pytest.raises(TypeError, match="BlockTransformerConfig or VanillaConfig"):
    generate(object(), params, prompt(), jax.random.key(0), num_new=4)
