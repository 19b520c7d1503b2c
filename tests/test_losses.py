"""hat_jax.losses: the one per-token NLL and the per-family metrics built on it."""

import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax import losses


def test_token_nll_is_the_log_softmax_cross_entropy_and_clips_pad_targets():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  want = -np.log(np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum())
  nll = losses.token_nll(logits, jnp.array([0, 3]))  # 3 = a pad id one past the vocabulary
  assert nll[0] == pytest.approx(want, rel=1e-6)
  assert np.isfinite(nll[1]) and nll[1] == pytest.approx(np.log(3.0), rel=1e-6)  # clipped to class 2


def test_masked_mean_ignores_masked_non_finite_values_and_empty_masks():
  assert float(losses.masked_mean(jnp.array([1.0, jnp.nan, 3.0]), jnp.array([1, 0, 1]))) == 2.0
  assert float(losses.masked_mean(jnp.array([5.0]), jnp.array([0]))) == 0.0


def test_paper_hat_bits_are_per_byte_while_the_loss_averages_every_prediction():
  # One word "ab" then [W]: three predictions, two bytes; a uniform model over 4 classes.
  logits = jnp.zeros((1, 1, 3, 4))
  targets = jnp.array([[[1, 2, 3]]])
  mask = jnp.ones((1, 1, 3), bool)
  loss, m = losses.paper_hat_metrics(logits, targets, mask, targets != 3)
  assert float(loss) == pytest.approx(np.log(4.0))
  assert float(m["bits_per_byte"]) == pytest.approx(3 * 2.0 / 2)  # 3 predictions x 2 bits over 2 bytes


def test_image_token_metrics_in_bits():
  _, m = losses.image_token_metrics(jnp.zeros((2, 5, 16)), jnp.zeros((2, 5), jnp.int32), 10, slice(-2, None))
  assert float(m["bits_per_image"]) == pytest.approx(5 * 4.0) and float(m["bits_per_dim"]) == pytest.approx(2.0)
