"""Image samplers (VAR next-scale, raster AR, Axial semi-parallel), classifier-free guidance and sample grids.

The samplers are checked against their models: a greedy sample must be the argmax of the model's
teacher-forced logits on that very sample (so the cached steps, the inputs fed back and the token order
all agree with training)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.generate import images as image_gen
from hat_jax.generate.sampling import GREEDY, SamplingConfig
from hat_jax.models.axial import AxialConfig, AxialTransformer
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import StackConfig
from hat_jax.models.var import VAR, VARConfig
from hat_jax.models.vqvae import MultiScaleVQVAE, VQConfig
from tests import jit_helpers
from tests.fakes import fake_gcs

STACK = StackConfig(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, qk_norm=True)
VQ = VQConfig(image_size=8, channels=1, ch=8, ch_mult=(1, 2), z_channels=4, vocab_size=16, scales=(1, 2, 4))
VAR_CFG = VARConfig(STACK, scales=VQ.scales, vocab_size=VQ.vocab_size, z_channels=VQ.z_channels, num_classes=10)
LABELS = jnp.array([0, 9, 3])


@pytest.fixture(scope="module")
def var_setup():
  vq, var = MultiScaleVQVAE(VQ), VAR(VAR_CFG)
  vq_params = jit_helpers.init(vq, jax.random.key(0), np.zeros((1, 8, 8), np.uint8))
  params = jit_helpers.init(var, jax.random.key(1), LABELS, jnp.zeros((3, VAR_CFG.seq_len - 1, VQ.z_channels)))
  return vq, vq_params, var, params


def test_cfg_ramp_and_guided_logits():
  assert image_gen.cfg_ramp(2.0, 0, 6) == 0.0 and image_gen.cfg_ramp(2.0, 5, 6) == 2.0
  assert image_gen.cfg_ramp(2.0, 1, 6) == pytest.approx(0.4) and image_gen.cfg_ramp(2.0, 0, 1) == 0.0
  cond, uncond = jnp.ones((3, 4, 16)), jnp.zeros((3, 4, 16))
  g = image_gen.guided_logits(jnp.concatenate([cond, uncond]), 1.5)
  assert g.shape == (3, 4, 16)
  np.testing.assert_allclose(g, 2.5)  # (1 + 1.5) * 1 - 1.5 * 0
  assert image_gen.with_null_class(jnp.array([2, 7]), 10).tolist() == [2, 7, 10, 10]


def test_var_sample_decodes_its_tokens(var_setup):
  vq, vq_params, var, params = var_setup
  images, tokens = image_gen.generate_var(var, params, vq, vq_params, LABELS, jax.random.key(2), cfg_scale=2.0,
                                          sampling=SamplingConfig(top_k=8, top_p=0.9))
  assert images.shape == (3, 8, 8, 1) and images.dtype == jnp.uint8
  assert tokens.shape == (3, VAR_CFG.seq_len) and tokens.dtype == jnp.int32 and int(tokens.max()) < VQ.vocab_size
  np.testing.assert_array_equal(images, jit_helpers.apply(vq, vq_params, tokens, method=MultiScaleVQVAE.decode))


def test_var_greedy_sample_is_argmax_of_teacher_forcing(var_setup):
  """cfg_scale=0: the guided logits are the conditional ones, which teacher forcing on the sampled tokens
  (inputs from `var_inputs`, as in training) reproduces at every scale."""
  vq, vq_params, var, params = var_setup
  _, tokens = image_gen.generate_var(var, params, vq, vq_params, LABELS, jax.random.key(2), cfg_scale=0.0,
                                     sampling=GREEDY)
  x_in = jit_helpers.apply(vq, vq_params, tokens, method=MultiScaleVQVAE.var_inputs)
  np.testing.assert_array_equal(np.argmax(np.asarray(jit_helpers.apply(var, params, LABELS, x_in)), -1), tokens)


RASTER = DecoderLMConfig(STACK, vocab_size=20, num_classes=11)  # 10 classes + the null class
RASTER_LEN = 12


def raster_inputs(labels, tokens):
  """As the raster AR task trains: [class token, t_0, ..., t_{N-2}]."""
  return jnp.concatenate([RASTER.class_token(labels)[:, None], tokens[:, :-1]], axis=1)


@pytest.fixture(scope="module")
def raster_setup():
  model = DecoderLM(RASTER)
  return model, jit_helpers.init(model, jax.random.key(1), jnp.zeros((3, RASTER_LEN), jnp.int32))


def test_raster_ar_is_causal_and_class_conditioned(raster_setup):
  model, params = raster_setup
  tokens = jax.random.randint(jax.random.key(0), (3, RASTER_LEN), 0, 20)
  logits = jit_helpers.apply(model, params, raster_inputs(LABELS, tokens))[0]
  assert logits.shape == (3, RASTER_LEN, 20)
  changed = jit_helpers.apply(model, params, raster_inputs(LABELS, tokens.at[:, 5].set((tokens[:, 5] + 1) % 20)))[0]
  diff = np.abs(np.asarray(changed - logits)).max(axis=(0, 2))
  assert (diff[:6] == 0).all() and (diff[6:] > 1e-6).all()  # logits[t] predicts token t from tokens < t
  other_class = jit_helpers.apply(model, params, raster_inputs(LABELS[::-1], tokens))[0]
  assert np.abs(np.asarray(other_class - logits))[[0, 2], 0].max() > 1e-6  # rows 0 and 2 changed class


def test_raster_ar_sample_with_cfg(raster_setup):
  model, params = raster_setup
  out = image_gen.generate_raster_ar(model, params, LABELS, jax.random.key(3), num_tokens=RASTER_LEN, cfg_scale=1.5,
                                     sampling=SamplingConfig(top_k=5))
  assert out.shape == (3, RASTER_LEN) and out.dtype == jnp.int32 and int(out.max()) < 20


def test_raster_ar_greedy_sample_is_argmax_of_full_model(raster_setup):
  model, params = raster_setup
  out = image_gen.generate_raster_ar(model, params, LABELS, jax.random.key(3), num_tokens=RASTER_LEN, sampling=GREEDY)
  logits = jit_helpers.apply(model, params, raster_inputs(LABELS, out))[0]
  np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), out)


def test_raster_ar_needs_class_tokens():
  model = DecoderLM(DecoderLMConfig(STACK, vocab_size=20))
  params = jit_helpers.init(model, jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="class tokens .*num_classes=0"):
    image_gen.generate_raster_ar(model, params, LABELS, jax.random.key(3), num_tokens=4)


def test_axial_greedy_sample_is_argmax_of_full_model():
  """Row-by-row sampling (outer context per row, inner decoder per pixel) equals the full model's argmax
  at every pixel: the semi-parallel passes see exactly the raster-order context."""
  model = AxialTransformer(AxialConfig(image_size=6, d_model=16, num_heads=2, head_dim=8, mlp_dim=32,
                                       num_outer_layers=1, num_inner_layers=1))
  params = jit_helpers.init(model, jax.random.key(0), np.zeros((3, 6, 6), np.uint8), LABELS)
  out = image_gen.generate_axial(model, params, LABELS, jax.random.key(1), sampling=GREEDY)
  assert out.shape == (3, 6, 6, 1) and out.dtype == jnp.uint8
  logits = jit_helpers.apply(model, params, np.asarray(out)[..., 0], LABELS)
  np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), np.asarray(out)[..., 0])


def test_image_grid_layout():
  images = np.arange(1, 6, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 1), np.uint8)
  grid = image_gen.image_grid(images, rows=2)  # 5 images in 2 rows -> 3 columns, 1-pixel gaps
  assert grid.shape == (2 * 3, 3 * 4) and grid.dtype == np.uint8
  assert grid[0, 0] == 1 and grid[0, 4] == 2 and grid[3, 0] == 4 and grid[3, 8] == 0  # the 6th cell is empty
  assert (grid[2] == 0).all() and (grid[:, 3] == 0).all()  # the gaps


def test_write_png_locally_and_in_a_gs_workdir(tmp_path):
  image = np.zeros((4, 4), np.uint8)
  image_gen.write_png(str(tmp_path / "a" / "grid.png"), image, upscale=2)
  assert (tmp_path / "a" / "grid.png").read_bytes()[:4] == b"\x89PNG"
  with fake_gcs(tmp_path):
    image_gen.write_png("gs://bucket/vq/grid.png", image)
  assert (tmp_path / "bucket" / "vq" / "grid.png").read_bytes()[:4] == b"\x89PNG"
