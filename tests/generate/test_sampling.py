"""Sampling utilities: greedy, temperature, top-k, top-p, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.generate.sampling import GREEDY, SamplingConfig, categorical, greedy, sample, top_k_mask, top_p_mask

# probs 0.5, 0.25, 0.125, 0.0625, 0.0625 in a shuffled vocabulary order.
PROBS = np.array([0.0625, 0.25, 0.5, 0.0625, 0.125])
LOGITS = jnp.log(jnp.asarray(PROBS))[None]  # [1, 5]


def draws(config, n=4000, logits=LOGITS, seed=0):
  batch = jnp.broadcast_to(logits, (n, logits.shape[-1]))
  return np.asarray(sample(batch, jax.random.key(seed), config))


def test_greedy_is_argmax_over_last_axis():
  logits = jax.random.normal(jax.random.key(1), (3, 4, 7))
  ids = sample(logits, None, GREEDY)
  assert ids.shape == (3, 4) and ids.dtype == jnp.int32
  np.testing.assert_array_equal(ids, np.argmax(np.asarray(logits), axis=-1))
  np.testing.assert_array_equal(greedy(logits), ids)


def test_temperature_one_matches_distribution():
  counts = np.bincount(draws(SamplingConfig()), minlength=5) / 4000
  np.testing.assert_allclose(counts, PROBS, atol=0.03)


def test_low_temperature_concentrates_and_high_flattens():
  cold = np.bincount(draws(SamplingConfig(temperature=0.2)), minlength=5) / 4000
  hot = np.bincount(draws(SamplingConfig(temperature=5.0)), minlength=5) / 4000
  assert cold[2] > 0.95
  assert hot.max() < 0.35 and hot.min() > 0.1


def test_top_k_restricts_support_and_renormalises():
  ids = draws(SamplingConfig(top_k=2))
  assert set(np.unique(ids)) == {1, 2}
  np.testing.assert_allclose(np.mean(ids == 2), 2 / 3, atol=0.03)
  np.testing.assert_array_equal(draws(SamplingConfig(top_k=1)), 2)


def test_top_k_mask_keeps_ties_and_handles_k_above_vocab():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0]])
  kept = np.isfinite(np.asarray(top_k_mask(logits, 1)))
  np.testing.assert_array_equal(kept, [[False, True, True, False]])
  np.testing.assert_array_equal(top_k_mask(logits, 10), logits)


@pytest.mark.parametrize("p, support", [(0.4, {2}), (0.5, {2}), (0.6, {1, 2}), (0.8, {1, 2, 4}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_smallest_set_reaching_mass(p, support):
  kept = np.isfinite(np.asarray(top_p_mask(LOGITS, p)))[0]
  assert set(np.flatnonzero(kept)) == support


def test_top_p_sampling_support_and_per_row():
  ids = draws(SamplingConfig(top_p=0.6))
  assert set(np.unique(ids)) == {1, 2}
  # Different rows get different nuclei.
  logits = jnp.log(jnp.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
  kept = np.isfinite(np.asarray(top_p_mask(logits, 0.5)))
  np.testing.assert_array_equal(kept, [[True, False, False], [True, True, False]])


def test_top_k_then_top_p_compose():
  ids = draws(SamplingConfig(top_k=3, top_p=0.7))  # top-3 renormalised: 4/7, 2/7, 1/7 -> nucleus {2, 1}
  assert set(np.unique(ids)) == {1, 2}


def test_sample_is_jittable_with_static_config():
  fn = jax.jit(sample, static_argnums=2)
  a = fn(LOGITS, jax.random.key(3), SamplingConfig(temperature=0.7, top_k=3))
  b = sample(LOGITS, jax.random.key(3), SamplingConfig(temperature=0.7, top_k=3))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SamplingConfig(**kwargs)


def test_non_greedy_without_rng_errors():
  with pytest.raises(ValueError, match="rng"):
    sample(LOGITS, None, SamplingConfig())


def test_categorical_never_draws_excluded_tokens():
  logits = jnp.array([[0.0, -jnp.inf, -jnp.inf], [-jnp.inf, -jnp.inf, 0.0], [0.0, 0.0, -jnp.inf], [-80.0, 0.0, -jnp.inf]])
  ids = np.asarray(categorical(jax.random.key(0), jnp.broadcast_to(logits, (5000, 4, 3))))
  assert set(ids[:, 0]) == {0} and set(ids[:, 1]) == {2} and set(ids[:, 2]) == {0, 1}
  assert set(ids[:, 3]) == {1}  # e^-80 mass: never drawn in 5000, never past the last token with mass
  np.testing.assert_allclose(np.mean(ids[:, 2]), 0.5, atol=0.03)


def test_categorical_matches_a_wide_distribution():
  probs = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(1), (64,)) * 2))
  ids = np.asarray(categorical(jax.random.key(2), jnp.broadcast_to(jnp.log(probs), (20000, 64))))
  np.testing.assert_allclose(np.bincount(ids, minlength=64) / 20000, probs, atol=0.012)
