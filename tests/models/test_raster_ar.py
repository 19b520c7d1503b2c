import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.models.layers import StackConfig
from hat_jax.models.raster_ar import RasterAR, RasterARConfig
from tests import jit_helpers

CFG = RasterARConfig(StackConfig(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64),
                     seq_len=12, vocab_size=20)


@pytest.fixture(scope="module")
def setup():
  model = RasterAR(CFG)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 20)
  labels = jnp.array([2, 5])
  return model, jit_helpers.init(model, jax.random.key(1), labels, tokens), tokens, labels


def test_causal_and_class_conditioned(setup):
  model, params, tokens, labels = setup
  logits = jit_helpers.apply(model, params, labels, tokens)
  assert logits.shape == (2, 12, 20)
  diff = np.abs(np.asarray(jit_helpers.apply(model, params, labels, tokens.at[:, 5].set((tokens[:, 5] + 1) % 20)) - logits))
  diff = diff.max(axis=(0, 2))
  assert (diff[:6] == 0).all() and (diff[6:] > 1e-6).all()  # logits[t] predicts token t from tokens < t
  assert np.abs(np.asarray(jit_helpers.apply(model, params, labels[::-1], tokens) - logits))[:, 0].max() > 1e-6


def test_cached_equals_uncached_logits(setup):
  model, params, tokens, labels = setup
  full = jit_helpers.apply(model, params, labels, tokens)
  caches, outs, prev = model.empty_caches(2), [], jnp.zeros((2,), jnp.int32)
  for t in range(12):
    out, caches = model.apply(params, labels, prev, t, caches, method=RasterAR.step)
    outs.append(out)
    prev = tokens[:, t]
  np.testing.assert_allclose(jnp.stack(outs, 1), full, atol=1e-5)


def test_bad_tokens_give_clear_error(setup):
  model, params, tokens, labels = setup
  with pytest.raises(ValueError, match=r"tokens \[batch, 12\]"):
    model.apply(params, labels, tokens[:, :10])
