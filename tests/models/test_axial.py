import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax import losses

from hat_jax.models.axial import AxialConfig, AxialTransformer, shift_down, shift_right
from tests import jit_helpers

CFG = AxialConfig(image_size=6, d_model=16, num_heads=2, head_dim=8, mlp_dim=32, num_outer_layers=1,
                  num_inner_layers=1)


@pytest.fixture(scope="module")
def setup():
  model = AxialTransformer(CFG)
  images = np.random.default_rng(0).integers(0, 256, (2, 6, 6), dtype=np.uint8)
  labels = jnp.array([1, 4])
  return model, jit_helpers.init(model, jax.random.key(0), images, labels), images, labels


def test_shifts():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  assert shift_down(x)[0, :, :, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]
  assert shift_right(x)[0, :, :, 0].tolist() == [[0, 0, 1], [0, 3, 4], [0, 6, 7]]


def test_raster_order_receptive_field(setup):
  """Logits at (i, j) depend exactly on the pixels before (i, j) in raster order."""
  model, params, images, labels = setup
  logits = jit_helpers.apply(model, params, images, labels)
  assert logits.shape == (2, 6, 6, 256)
  for (i, j) in [(0, 0), (2, 3), (3, 5), (5, 5)]:
    changed = images.copy()
    changed[0, i, j] = (int(changed[0, i, j]) + 101) % 256
    diff = np.abs(np.asarray(jit_helpers.apply(model, params, changed, labels) - logits)).max(-1)
    flat = diff[0].reshape(-1)
    pos = i * 6 + j
    assert (flat[:pos + 1] == 0).all(), (i, j)
    if pos + 1 < 36:
      assert flat[pos + 1] > 1e-6  # the next pixel in raster order sees it
    assert (diff[1] == 0).all()  # other examples are untouched


def test_bits_per_dim_of_uniform_model_is_8():
  pixels = jnp.zeros((2, 4, 4), jnp.int32)
  assert float(losses.bits_per_dim(jnp.zeros((2, 4, 4, 256)), pixels)) == pytest.approx(8.0)


def test_pallas_axial_kernel_matches_xla(setup):
  _, params, images, labels = setup
  xla = jit_helpers.apply(AxialTransformer(CFG, attention_impl="xla"), params, images, labels)
  pallas = jit_helpers.apply(AxialTransformer(CFG, attention_impl="pallas"), params, images, labels)
  np.testing.assert_allclose(pallas, xla, atol=2e-4)


def test_bad_inputs_give_clear_errors(setup):
  model, params, _, labels = setup
  with pytest.raises(ValueError, match=r"Expected images of shape \[batch, 6, 6, 1\]"):
    model.apply(params, np.zeros((2, 8, 8), np.uint8), labels)
  with pytest.raises(ValueError, match="channel"):
    model.apply(params, np.zeros((2, 6, 6, 3), np.uint8), labels)
  with pytest.raises(ValueError, match="single-channel"):
    AxialConfig(channels=3)
