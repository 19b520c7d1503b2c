import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.models.layers import check_images
from hat_jax.models.vqvae import MultiScaleVQVAE, VQConfig, area_matrix, area_resize, phi_index
from tests import jit_helpers

CFG = VQConfig(image_size=8, channels=1, ch=8, ch_mult=(1, 2), z_channels=4, vocab_size=16, scales=(1, 2, 4),
               num_phi=2)


@pytest.fixture(scope="module")
def model_and_params():
  model = MultiScaleVQVAE(CFG)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
  return model, jit_helpers.init(model, jax.random.key(0), images), images


def test_round_trip_shapes(model_and_params):
  model, params, images = model_and_params
  out = jit_helpers.apply(model, params, images)
  assert out["recon"].shape == (3, 8, 8, 1)
  assert [i.shape for i in out["indices"]] == [(3, 1, 1), (3, 2, 2), (3, 4, 4)]
  tokens = jit_helpers.apply(model, params, images, method=MultiScaleVQVAE.encode)
  assert tokens.shape == (3, CFG.seq_len) == (3, 1 + 4 + 16) and tokens.dtype == jnp.int32
  assert int(tokens.min()) >= 0 and int(tokens.max()) < CFG.vocab_size
  decoded = jit_helpers.apply(model, params, tokens, method=MultiScaleVQVAE.decode)
  assert decoded.shape == (3, 8, 8, 1) and decoded.dtype == jnp.uint8
  # Decoding the tokens reproduces the forward pass's reconstruction (f_hat is the sum of the scales).
  np.testing.assert_allclose(np.asarray(decoded, np.float32),
                             np.asarray(jnp.clip(jnp.round((out["recon"] + 1) * 127.5), 0, 255)), atol=1.0)
  assert jit_helpers.apply(model, params, images[..., None], method=MultiScaleVQVAE.encode).shape == tokens.shape


def test_residual_accumulation_matches_algorithm_1(model_and_params):
  """Each scale quantizes the area-downsampled residual f - sum of the coarser scales' phi(up(Z[r]))."""
  model, params, images = model_and_params
  tokens = jit_helpers.apply(model, params, images, method=MultiScaleVQVAE.encode)
  f = np.asarray(jit_helpers.apply(model, params, images, method=lambda m, x: m._features(x)))
  book = np.asarray(params["params"]["quantizer"]["codebook"].unbox())
  maps = jit_helpers.apply(model, params, tokens, method=MultiScaleVQVAE.split_tokens)
  f_rest = f.copy()
  for k, pn in enumerate(CFG.scales):
    z = np.asarray(area_resize(jnp.asarray(f_rest), pn))  # [B, pn, pn, C]
    expected = np.argmin(((z[..., None, :] - book) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(maps[k]), expected)
    f_rest = f_rest - np.asarray(model.apply(params, maps[k], k, method=lambda m, i, k: m.quantizer.scale_contribution(i, k)))
  f_hat = np.asarray(jit_helpers.apply(model, params, tokens, method=MultiScaleVQVAE.tokens_to_fhat))
  np.testing.assert_allclose(f - f_hat, f_rest, atol=1e-5)
  # VAR teacher-forcing input of scale k+1 = area_down(running sum of scales <= k).
  inputs = jit_helpers.apply(model, params, tokens, method=MultiScaleVQVAE.var_inputs)
  assert inputs.shape == (3, CFG.seq_len - 1, CFG.z_channels)
  partial = sum(model.apply(params, maps[j], j, method=lambda m, i, k: m.quantizer.scale_contribution(i, k))
                for j in range(2))
  np.testing.assert_allclose(inputs[:, -16:], np.asarray(partial).reshape(3, 16, -1), atol=1e-5)


def test_area_resize_is_adaptive_average_pooling():
  m = area_matrix(8, 3)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert np.flatnonzero(m[0]).tolist() == [0, 1, 2] and np.flatnonzero(m[1]).tolist() == [2, 3, 4, 5]
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  np.testing.assert_allclose(area_resize(x, 2), x.reshape(2, 2, 2, 2, 2, 1).mean((2, 4)), atol=1e-6)


def test_phi_sharing_follows_var_ticks():
  assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert {phi_index(k, 6, 1) for k in range(6)} == {0}


def test_bad_images_give_clear_errors():
  with pytest.raises(ValueError, match=r"Expected images of shape \[batch, 16, 16, 1\].*got shape \(2, 28, 28\)"):
    check_images(np.zeros((2, 28, 28), np.uint8), 16, 1)
  with pytest.raises(ValueError, match=r"Expected 1 channel\(s\).*got 3 channels"):
    check_images(np.zeros((2, 16, 16, 3), np.uint8), 16, 1)
  model = MultiScaleVQVAE(CFG)
  with pytest.raises(ValueError, match="Expected images of shape"):
    model.init(jax.random.key(0), np.zeros((1, 16, 16), np.uint8))


def test_bad_config_gives_clear_errors():
  with pytest.raises(ValueError, match="last scale must equal the latent side"):
    VQConfig(image_size=16, ch_mult=(1, 2), scales=(1, 2, 4))
  with pytest.raises(ValueError, match="strictly increasing"):
    VQConfig(scales=(1, 3, 2, 8))
  with pytest.raises(ValueError, match="Unknown VQVAE config fields"):
    VQConfig.from_config({"vocab": 3})

