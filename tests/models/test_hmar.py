"""HMAR: the Markovian mask in the model, chunked (per-scale) passes equal the full pass, the masked loss,
the sampling schedule (respected, and clear errors for bad ones), inpainting, and the task's eval NLLs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hmar as hmar_config
from configs import var as var_config
from configs import vqvae as vqvae_config
from hat_jax.generate import images as image_gen
from hat_jax.generate.sampling import GREEDY
from hat_jax.models import hmar as hmar_lib
from hat_jax.models.hmar import HMAR, check_schedule, markov_mask, masked_after, reveal_counts
from hat_jax.models.layers import StackConfig
from hat_jax.models.var import VARConfig
from hat_jax.models.vqvae import MultiScaleVQVAE
from hat_jax.train import registry, trainer
from tests import jit_helpers
from tests.models.test_var import VQ, tokenized_images

STACK = StackConfig(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, qk_norm=True)
CFG = VARConfig(STACK, scales=VQ.scales, vocab_size=VQ.vocab_size, z_channels=VQ.z_channels, num_classes=10)
MASK = CFG.vocab_size
# Model tests take any codebook (an input, like x_in); the sampler reads the tokenizer's own.
CODEBOOK = np.random.default_rng(1).normal(size=(VQ.vocab_size, VQ.z_channels)).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
  vq, vq_params, images, tokens, x_in = tokenized_images()
  model = HMAR(CFG)
  labels = jnp.array([3, 7])
  token_in = jnp.where(hmar_lib.random_mask(jax.random.key(5), CFG, 2), MASK, tokens)
  params = jit_helpers.init(model, jax.random.key(1), labels, x_in, token_in, CODEBOOK)
  return vq, vq_params, model, params, labels, x_in, tokens, token_in


def test_model_uses_the_markov_layout():
  spec, by_index = HMAR(CFG).scale_mask()
  assert spec == markov_mask(CFG.scales) and spec.blocks == (1, 4, 16) and spec.window == 1 and by_index


def test_each_scale_sees_only_its_own_block(setup):
  """Block-diagonal: changing scale 1's input (f_hat-derived or its token) changes scale 1's logits only."""
  _, _, model, params, labels, x_in, _, token_in = setup
  logits = jit_helpers.apply(model, params, labels, x_in, token_in, CODEBOOK)
  assert logits.shape == (2, CFG.seq_len, VQ.vocab_size)
  for changed in (jit_helpers.apply(model, params, labels, x_in.at[:, 1].add(1.0), token_in, CODEBOOK),  # position 2
                  jit_helpers.apply(model, params, labels, x_in, token_in.at[:, 2].set(0), CODEBOOK)):
    diff = np.abs(np.asarray(changed - logits)).max(axis=(0, 2))
    assert (diff[1:5] > 1e-6).all()  # every position of scale 1 (bidirectional within the scale)
    assert (diff[:1] == 0).all() and (diff[5:] == 0).all()  # neither the coarser nor the finer scale


def test_per_scale_steps_equal_the_full_pass(setup):
  _, _, model, params, labels, x_in, _, token_in = setup
  full = jit_helpers.apply(model, params, labels, x_in, token_in, CODEBOOK)
  outs = []
  for k in range(len(CFG.scales)):
    span = CFG.scale_slice(k)
    x_k = None if k == 0 else x_in[:, span.start - 1:span.stop - 1]
    step = jax.jit(lambda p, l, x, t, k=k: model.apply(p, l, x, k, t, CODEBOOK, method=HMAR.step))
    outs.append(step(params, labels, x_k, token_in[:, span]))
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_pallas_kernel_matches_xla_in_the_model(setup):
  _, _, _, params, labels, x_in, _, token_in = setup
  xla = jit_helpers.apply(HMAR(CFG, attention_impl="xla"), params, labels, x_in, token_in, CODEBOOK)
  pallas = jit_helpers.apply(HMAR(CFG, attention_impl="pallas"), params, labels, x_in, token_in, CODEBOOK)
  np.testing.assert_allclose(pallas, xla, atol=2e-4)


def test_bad_token_inputs_are_clear_errors(setup):
  _, _, model, params, labels, x_in, tokens, _ = setup
  with pytest.raises(ValueError, match=r"HMAR token inputs must be \[batch, 21\]"):
    model.apply(params, labels, x_in, tokens[:, :-1], CODEBOOK)
  with pytest.raises(ValueError, match=r"HMAR needs the tokenizer's codebook \[16, 4\], got \(16, 3\)"):
    model.apply(params, labels, x_in, tokens, CODEBOOK[:, :3])


def test_random_mask_and_masked_loss():
  masked = np.asarray(hmar_lib.random_mask(jax.random.key(0), CFG, 256, full_mask_prob=0.25))
  per_scale = [masked[:, CFG.scale_slice(k)].sum(1) for k in range(3)]
  assert (per_scale[0] == 1).all()  # the 1x1 scale is always masked (at least one token per scale)
  for k, n in enumerate((1, 4, 16)):
    assert per_scale[k].min() >= 1 and per_scale[k].max() == n
  assert 0.2 < np.mean(per_scale[2] == 16) < 0.45  # 25% forced + cos(pi/2 u) > 15/16 about 11% of the rest
  ranks = np.asarray(hmar_lib.ranks_within_scales(jax.random.key(1), CFG, 3))
  for k, n in enumerate((1, 4, 16)):
    np.testing.assert_array_equal(np.sort(ranks[:, CFG.scale_slice(k)], axis=1), np.tile(np.arange(n), (3, 1)))
  # All masked: the weighted loss is the plain mean NLL over all L positions (VAR's loss).
  logits = jax.random.normal(jax.random.key(2), (2, CFG.seq_len, 16))
  tokens = jax.random.randint(jax.random.key(3), (2, CFG.seq_len), 0, 16)
  loss, metrics = hmar_lib.masked_loss(logits, tokens, jnp.ones((2, CFG.seq_len), bool), CFG)
  np.testing.assert_allclose(loss, metrics["masked_nll"], rtol=1e-6)
  # One masked token in scale 2 of image 0 stands for all 16 (weight 16/1); other scales fully masked.
  some = jnp.ones((2, CFG.seq_len), bool).at[0, 5:].set(False).at[0, 7].set(True)
  loss, _ = hmar_lib.masked_loss(logits, tokens, some, CFG)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
  want = (nll[0, :5].sum() + 16 * nll[0, 7] + nll[1].sum()) / 2 / CFG.seq_len
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_schedule_counts():
  assert reveal_counts(64, 4) == (5, 14, 21, 24)  # MaskGIT's cosine: few first, most at the end
  assert reveal_counts(4, 4) == (1, 1, 1, 1) and reveal_counts(9, 1) == (9,)
  for n in (1, 4, 9, 16, 36, 64):
    for s in range(1, n + 1):
      counts = reveal_counts(n, s)
      assert len(counts) == s and sum(counts) == n and min(counts) >= 1
  # Fewer unknown tokens than steps (inpainting): some steps reveal none, never a negative count.
  after = np.asarray(masked_after(jnp.array([0, 2, 16]), 4, xp=jnp))
  assert after[:, -1].tolist() == [0, 0, 0] and (np.diff(np.concatenate([[[0], [2], [16]], after], 1)) <= 0).all()


@pytest.mark.parametrize("steps, message", [
    ((1, 2), r"has 2 entries but the tokenizer has 3 scales \(1, 2, 4\): give one int per scale"),
    ((1, 0, 2), r"scale 1 \(2x2 = 4 tokens\) cannot be generated in 0 steps; .* must be in \[1, 4\]"),
    ((1, 5, 2), r"scale 1 \(2x2 = 4 tokens\) cannot be generated in 5 steps"),
    (2, r"scale 0 \(1x1 = 1 tokens\) cannot be generated in 2 steps"),
    ((1, 1.5, 2), r"entry 1 \(1.5\) is not an int"),
    ("1,x,2", r"'1,x,2' is not a comma-separated list of ints"),
    (None, r"must be an int or a sequence of ints, got None"),
])
def test_bad_schedules_are_clear_errors(steps, message):
  with pytest.raises(ValueError, match=message):
    check_schedule(steps, CFG.scales)


def test_schedule_forms():
  assert check_schedule("1, 2, 3", CFG.scales) == (1, 2, 3)
  assert check_schedule("(1,2,3)", CFG.scales) == (1, 2, 3)
  assert check_schedule(1, CFG.scales) == (1, 1, 1) == check_schedule("1", CFG.scales)
  assert check_schedule([1, np.int64(4), 16], CFG.scales) == (1, 4, 16)


STEPS = (1, 2, 4)


def test_sampler_respects_the_schedule(setup):
  vq, vq_params, model, params, labels, *_ = setup
  images, tokens, at = image_gen.generate_hmar(model, params, vq, vq_params, labels, jax.random.key(0), steps=STEPS)
  assert images.shape == (2, 8, 8, 1) and images.dtype == jnp.uint8 and tokens.shape == (2, CFG.seq_len)
  assert int(tokens.max()) < VQ.vocab_size  # no MASK left
  at = np.asarray(at)
  for k, (pn, s) in enumerate(zip(CFG.scales, STEPS)):
    counts = [np.bincount(row, minlength=s).tolist() for row in at[:, CFG.scale_slice(k)]]
    assert counts == [list(reveal_counts(pn * pn, s))] * 2  # tokens drawn per step = the cosine schedule
  with pytest.raises(ValueError, match="has 2 entries but the tokenizer has 3 scales"):
    image_gen.generate_hmar(model, params, vq, vq_params, labels, jax.random.key(0), steps=(1, 2))
  with pytest.raises(ValueError, match=r"scale 2 \(4x4 = 16 tokens\) cannot be generated in 17 steps"):
    image_gen.generate_hmar(model, params, vq, vq_params, labels, jax.random.key(0), steps=(1, 2, 17))


def test_inpainting_keeps_the_given_tokens(setup):
  """The known tokens are kept (never redrawn); the others are spread over the steps."""
  vq, vq_params, model, params, labels, *_ = setup
  steps = STEPS
  known = jnp.asarray(image_gen.inpainting_mask(CFG.scales, np.arange(8)[:, None] >= np.zeros((1, 8)) + 4))
  assert known.tolist() == [False] + [True, True, False, False] + [True] * 8 + [False] * 8
  given = jnp.full((2, CFG.seq_len), 3, jnp.int32)
  _, filled, at = image_gen.generate_hmar(model, params, vq, vq_params, labels, jax.random.key(1), steps=steps,
                                          known_tokens=given, known_mask=jnp.broadcast_to(known, given.shape))
  filled, at = np.asarray(filled), np.asarray(at)
  assert (filled[:, np.asarray(known)] == 3).all() and (at[:, np.asarray(known)] == -1).all()
  assert (at[:, ~np.asarray(known)] >= 0).all()
  assert sorted(set(at[0, CFG.scale_slice(2)][8:].tolist())) == [0, 1, 2, 3]  # 8 unknown over 4 steps


def test_one_step_greedy_sample_is_the_argmax_of_the_full_masked_pass(setup):
  """With one step per scale, no guidance and greedy draws, every scale's tokens are the argmax of the
  teacher-forced all-MASK pass over the sampled tokens' own inputs (the sampler sees what training saw)."""
  vq, vq_params, model, params, labels, *_ = setup
  _, tokens, _ = image_gen.generate_hmar(model, params, vq, vq_params, labels, jax.random.key(0), steps=1,
                                         cfg_scale=0.0, sampling=GREEDY)
  x_in = jax.jit(lambda p, t: vq.apply(p, t, method=MultiScaleVQVAE.var_inputs))(vq_params, tokens)
  logits = jit_helpers.apply(model, params, labels, x_in, jnp.full_like(tokens, MASK), CODEBOOK)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(jnp.argmax(logits, -1)))


@pytest.mark.slow  # compiles the tiny task's training loss and two eval losses (~20 s on 2 cores)
def test_task_losses_and_eval_nlls():
  """The task on stub tokenizer params: the training loss, and the eval's two NLLs, which coincide for a
  one-step schedule (each scale's tokens all predicted at once given x~_{<k})."""
  config = hmar_config.get_config("tiny")
  config.sample.steps = "1"
  task = registry.make_task(config)
  task.stub_frozen_inputs()
  params = jax.jit(task.init_params)(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, task.vq_cfg.vocab_size, (4, task.vq_cfg.seq_len)).astype(np.int32),
           "labels": np.arange(4, dtype=np.int32)}
  loss, metrics = jax.jit(task.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(loss) and 0 < metrics["mask_fraction"] <= 1
  eval_batch = {**batch, "eval_seed": np.arange(4, dtype=np.int32)}
  one = jax.jit(task.loss)(params, eval_batch, jax.random.key(2))[1]
  np.testing.assert_allclose(one["bits_per_image_steps"], one["bits_per_image"], rtol=1e-5)
  task.schedule = check_schedule("1,1,1,1,2,3", task.var_cfg.scales)
  steps = jax.jit(task.loss)(params, eval_batch, jax.random.key(2))[1]
  np.testing.assert_allclose(steps["bits_per_image"], one["bits_per_image"], rtol=1e-6)
  assert np.isfinite(steps["bits_per_image_steps"]) and steps["bits_per_image_steps"] != one["bits_per_image"]
  flops = task.training_flops()
  var_flops = registry.make_task(var_config.get_config("tiny")).training_flops()
  assert flops["forward/blocks"] < var_flops["forward/blocks"]


@pytest.mark.slow  # a tokenizer run, then HMAR trained, evaluated and sampled through the trainer (~1-2 min)
def test_train_eval_and_sample_through_the_trainer(tmp_path):
  vq = vqvae_config.get_config("tiny")
  hm = hmar_config.get_config("tiny")
  for config in (vq, hm):
    config.data.synthetic_examples, config.data.eval_examples, config.train.steps = 64, 16, 2
  hm.tokenizer.workdir = str(tmp_path / "vq")
  hm.sample.output_dir = str(tmp_path / "out")
  trainer.train(vq, str(tmp_path / "vq"))
  final = trainer.train(hm, str(tmp_path / "hmar"))
  assert final["step"] == 2 and np.isfinite(final["eval/bits_per_image"]) and "eval/bits_per_image_steps" in final
  message = trainer.generate(hm, str(tmp_path / "hmar"))
  assert "hmar_samples.png" in message and "hmar_inpainting.png" in message
  for name in ("hmar_samples.png", "hmar_inpainting.png"):
    assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
