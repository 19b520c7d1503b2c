import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.kernels import dense_mask
from hat_jax.models.layers import StackConfig
from hat_jax.models.var import BLOCK_CAUSAL, VAR, VARConfig
from hat_jax.models.vqvae import MultiScaleVQVAE, VQConfig
from tests import jit_helpers

VQ = VQConfig(image_size=8, channels=1, ch=8, ch_mult=(1, 2), z_channels=4, vocab_size=16, scales=(1, 2, 4))
STACK = StackConfig(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, qk_norm=True)
CFG = VARConfig(STACK, scales=VQ.scales, vocab_size=VQ.vocab_size, z_channels=VQ.z_channels, num_classes=10)


def tokenized_images():
  """A random tokenizer's (vq, vq_params, images, scale tokens, VAR inputs) for two 8x8 images."""
  vq = MultiScaleVQVAE(VQ)
  images = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
  # jitted: eager init/apply of the conv tokenizer dispatches op by op and takes tens of seconds
  vq_params = jax.jit(vq.init)(jax.random.key(0), images)
  tokens = jax.jit(lambda p, x: vq.apply(p, x, method=MultiScaleVQVAE.encode))(vq_params, images)
  x_in = jax.jit(lambda p, t: vq.apply(p, t, method=MultiScaleVQVAE.var_inputs))(vq_params, tokens)
  return vq, vq_params, images, tokens, x_in


@pytest.fixture(scope="module")
def setup():
  vq, vq_params, images, tokens, x_in = tokenized_images()
  model = VAR(CFG)
  labels = jnp.array([3, 7])
  params = jax.jit(model.init)(jax.random.key(1), labels, x_in)
  return vq, vq_params, model, params, labels, x_in


def test_block_causal_mask_over_scales():
  ids = CFG.scale_ids[None]  # [1, 21]: 1 x scale 0, 4 x scale 1, 16 x scale 2
  m = np.asarray(dense_mask(BLOCK_CAUSAL, ids, ids)[0])
  assert m[0].tolist() == [True] + [False] * 20
  assert m[1].tolist() == m[4].tolist() == [True] * 5 + [False] * 16  # whole own scale, bidirectional
  assert m[5:].all()


def test_logits_respect_block_causality(setup):
  _, _, model, params, labels, x_in = setup
  logits = jit_helpers.apply(model, params, labels, x_in)
  assert logits.shape == (2, CFG.seq_len, VQ.vocab_size)
  # Perturb the input of the last position of scale 1 (sequence position 4 = x_in[:, 3]).
  changed = jit_helpers.apply(model, params, labels, x_in.at[:, 3].add(1.0))
  diff = np.abs(np.asarray(changed - logits)).max(axis=(0, 2))
  assert (diff[:1] == 0).all()  # scale 0 does not see scale 1
  assert (diff[1:5] > 1e-6).all()  # every position of scale 1 sees it (within-scale attention)
  assert (diff[5:] > 1e-6).all()


def test_cached_equals_uncached_logits(setup):
  _, _, model, params, labels, x_in = setup
  full = jit_helpers.apply(model, params, labels, x_in)
  caches, outs = model.empty_caches(2), []
  for k in range(len(CFG.scales)):
    span = CFG.scale_slice(k)
    x_k = None if k == 0 else x_in[:, span.start - 1:span.stop - 1]
    out, caches = model.apply(params, labels, x_k, k, caches, method=VAR.step)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert caches[0].length.tolist() == [CFG.seq_len] * 2


def test_bad_inputs_give_clear_errors(setup):
  _, _, model, params, labels, x_in = setup
  with pytest.raises(ValueError, match="must have 21 positions"):
    model.apply(params, labels, x_in[:, :-1])
  with pytest.raises(ValueError, match="labels must be"):
    model.apply(params, labels[:, None], x_in)


def test_pallas_block_attention_matches_xla(setup):
  """attention_impl='pallas' runs the block-attention kernel (interpret mode on CPU) on the scale-id mask."""
  _, _, _, params, labels, x_in = setup
  xla = jit_helpers.apply(VAR(CFG, attention_impl="xla"), params, labels, x_in)
  pallas = jit_helpers.apply(VAR(CFG, attention_impl="pallas"), params, labels, x_in)
  np.testing.assert_allclose(pallas, xla, atol=2e-4)
