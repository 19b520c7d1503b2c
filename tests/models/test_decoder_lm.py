"""The decoder-only LM (hat_jax.models.decoder_lm): shapes, masks, vocabulary rows, configs, and the byte
baseline task on it (loss, cached sampling through the jitted engine). Engine details:
tests/generate/test_block_engine.py; the vanilla task: tests/models/test_block_transformer.py."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bytes as bytes_config
from configs.sweeps import bytes_scaling
from hat_jax.data.splitter import BOS
from hat_jax.generate.block_engine import continue_prompts
from hat_jax.generate.sampling import GREEDY
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import StackConfig
from hat_jax.train import lm_tasks, registry
from tests import jit_helpers


def stack(d=16, layers=2, window=None):
  return StackConfig(d_model=d, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=2 * d,
                     window=window)


def init(cfg, seed=0):
  model = DecoderLM(cfg)
  return model, jit_helpers.init(model, jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))


def rand_tokens(shape, seed=1, vocab=256):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


def logits_of(model, params, tokens, **kw):
  return jit_helpers.apply(model, params, tokens, **kw)[0]


def test_shapes_causality_and_param_names():
  model, params = init(DecoderLMConfig(stack()))
  tokens = rand_tokens((2, 12))
  logits, caches = jit_helpers.apply(model, params, tokens)
  assert logits.shape == (2, 12, 256) and logits.dtype == jnp.float32 and caches is None
  diff = np.abs(np.asarray(logits_of(model, params, tokens.at[:, 5].set(0)) - logits)).max(axis=(0, 2))
  np.testing.assert_array_equal(diff[:5], 0.0)
  assert diff[5:].min() > 0
  assert set(params["params"]) == {"embed", "decoder", "final_norm", "head"}


@pytest.mark.parametrize("kwargs, rows", [({}, 256), (dict(pad_row=True), 257),
                                          (dict(pad_row=True, vocab_pad_to_multiple=8), 264),
                                          (dict(vocab_size=1000, vocab_pad_to_multiple=64), 1024)])
def test_input_rows_pad_row_and_output_vocabulary(kwargs, rows):
  cfg = DecoderLMConfig(stack(), **kwargs)
  shapes = jax.eval_shape(DecoderLM(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  assert shapes["embed"]["embedding"].value.shape == (rows, 16) == (cfg.input_vocab_size, 16)
  assert shapes["head"]["kernel"].value.shape == (16, cfg.vocab_size)  # the pad row is never predicted
  assert cfg.pad_id == (cfg.vocab_size if cfg.pad_row else 0)


def test_mask_by_index_equals_masking_by_position_on_packed_rows():
  """Packed rows (positions restart at each document): index masking gives the position-masked logits."""
  segment_ids = jnp.array([[1] * 5 + [2] * 4 + [3] * 3 + [0] * 4])
  positions = jnp.array([list(range(5)) + list(range(4)) + list(range(3)) + [0] * 4])
  tokens = rand_tokens((1, 16))
  by_position, params = init(DecoderLMConfig(stack()))
  by_index = DecoderLM(DecoderLMConfig(stack(), mask_by_index=True))
  a = logits_of(by_position, params, tokens, positions=positions, segment_ids=segment_ids)
  b = logits_of(by_index, params, tokens, positions=positions, segment_ids=segment_ids)
  real = np.asarray(segment_ids[0]) > 0
  np.testing.assert_allclose(np.asarray(a)[0, real], np.asarray(b)[0, real], atol=1e-5)
  # A document's logits do not depend on the other documents of the row.
  alone = logits_of(by_index, params, tokens[:, 5:9])
  np.testing.assert_allclose(np.asarray(b)[0, 5:9], np.asarray(alone)[0], atol=1e-5)


@pytest.mark.parametrize("mask_by_index", [False, True])
def test_sliding_window(mask_by_index):
  model, params = init(DecoderLMConfig(stack(layers=1, window=3), mask_by_index=mask_by_index))
  tokens = rand_tokens((1, 12))
  logits = logits_of(model, params, tokens)
  diff = np.abs(np.asarray(logits_of(model, params, tokens.at[:, 4].set(7)) - logits)).max(axis=(0, 2))
  np.testing.assert_array_equal(diff[:4], 0.0)
  assert diff[4:7].min() > 0  # positions 4, 5, 6 see position 4 (window 3)
  np.testing.assert_array_equal(diff[7:], 0.0)


def test_config_from_mappings_and_errors():
  section = dict(stack().__dict__)
  assert DecoderLMConfig.from_config({"decoder": section}) == DecoderLMConfig(stack())
  assert DecoderLMConfig.from_config({"stack": section, "pad_row": True}) == DecoderLMConfig(stack(), pad_row=True)
  with pytest.raises(ValueError, match="both `decoder` and `stack`"):
    DecoderLMConfig.from_config({"decoder": section, "stack": section})
  with pytest.raises(ValueError, match="needs a `decoder` section"):
    DecoderLMConfig.from_config({"vocab_size": 256})
  with pytest.raises(ValueError, match="Unknown decoder LM config fields"):
    DecoderLMConfig.from_config({"decoder": section, "layers": 2})
  for kwargs, match in [(dict(vocab_size=1), "vocab_size"), (dict(pad_row=1), "pad_row must be a bool"),
                        (dict(vocab_pad_to_multiple=0), "vocab_pad_to_multiple must be a positive int")]:
    with pytest.raises(ValueError, match=match):
      DecoderLMConfig(stack(), **kwargs)
  model, params = init(DecoderLMConfig(stack()))
  with pytest.raises(ValueError, match=r"tokens must be \[batch, seq_len\]"):
    model.apply(params, jnp.zeros((4,), jnp.int32))


# -- the byte baseline (task "bytes") ----------------------------------------------------------------------


def test_byte_baseline_samples_through_the_engine_like_its_uncached_forward():
  """Greedy continuations of BOS + prompt, batched with ragged prompts, are the argmax of the full forward
  pass at every step; a row that emits EOD stops there."""
  cfg = DecoderLMConfig(stack(32), mask_by_index=True)
  model, params = init(cfg)
  prompts = [bytes([BOS]) + b"Hi", bytes([BOS]) + b"Hello there"]
  outs = continue_prompts(cfg, params, prompts, jax.random.key(0), num_new=12, sampling=GREEDY)
  for prompt, out in zip(prompts, outs):
    assert out.shape == (12,)
    full = jnp.asarray(list(prompt) + out.tolist())[None]
    logits = logits_of(model, params, full)
    np.testing.assert_array_equal(out, np.argmax(np.asarray(logits[0, len(prompt) - 1:-1]), -1))
  eod_at = int(outs[0][3])  # stop row 0 at its 4th byte (or earlier, at the first byte equal to it)
  stopped = continue_prompts(cfg, params, prompts[:1], jax.random.key(0), num_new=12, eos_id=eod_at)[0]
  n = int(np.flatnonzero(outs[0] == eod_at)[0]) + 1
  np.testing.assert_array_equal(stopped, outs[0][:n])


def test_bytes_task_config_loss_sample_and_sweep_overrides():
  config = bytes_config.get_config("size=test,corpus=toy")
  task = registry.make_task(config)
  assert isinstance(task, lm_tasks.BytesTask)
  assert task.model_cfg.mask_by_index and task.model_cfg.decoder.window is None and not task.model_cfg.pad_row
  params = task.init_params(jax.random.key(0))
  batch = next(task.train_iterator(0))
  loss, metrics = jax.jit(task.loss)(params, batch, None)
  assert np.isfinite(float(loss)) and {"bits_per_byte", "byte_accuracy", "word_accuracy"} <= set(metrics)
  config.sample.num_samples, config.sample.max_new_bytes = 2, 5
  text = task.generate(params, jax.random.key(1))
  assert text.count("\n---\n") == 1 and text.startswith(config.sample.prompt)
  # The scaling sweep's overrides (`model.stack.*`) size the model.
  swept = bytes_config.get_config("size=test,corpus=toy")
  for key, value in bytes_scaling.run(48, 60).items():
    if key.startswith("model."):
      section, field = key.split(".")[1:]
      swept.model[section][field] = value
  assert registry.make_task(swept).model_cfg.decoder.d_model == 48
  swept.model.vocab_size = 257
  with pytest.raises(ValueError, match="vocab_size must be 256"):
    registry.make_task(swept)


def test_bytes_task_samples_without_bos_from_the_raw_prompt(monkeypatch):
  """data.bos=False: the prompt goes to the engine as its own bytes (no BOS byte first); an empty prompt
  is an error that says what to pass."""
  from hat_jax.generate import block_engine
  config = bytes_config.get_config("size=test,corpus=toy")
  config.data.bos = False
  config.sample.num_samples, config.sample.prompt = 2, "Hi"
  task = registry.make_task(config)
  seen = []
  monkeypatch.setattr(block_engine, "continue_prompts",
                      lambda cfg, params, prompts, rng, **kw: seen.append(prompts) or [np.zeros(0, np.int32)] * 2)
  task.generate({}, jax.random.key(0))
  assert seen == [[b"Hi", b"Hi"]]
  config.sample.prompt = ""
  with pytest.raises(ValueError, match="empty prompt has nothing to condition on"):
    registry.make_task(config).generate({}, jax.random.key(0))


def test_bytes_task_decode_step_matches_the_engine():
  config = bytes_config.get_config("size=test,corpus=toy")
  task = registry.make_task(config)
  (name, (fn, args)), = task.decode_steps(2).items()
  assert name == "token"
  params = task.init_params(jax.random.key(0))
  logits, caches = jax.eval_shape(fn, params, *args)
  assert logits.shape == (2, 1, 256) and jax.tree.structure(caches) == jax.tree.structure(args[1])


def test_every_decoder_lm_config_builds():
  """The configs that build a DecoderLM: bytes, vanilla_lm (with its paper sizes), the BPE baseline's."""
  vanilla = importlib.import_module("configs.vanilla_lm")
  for size in ("tiny", *vanilla.PAPER_SIZES):
    cfg = DecoderLMConfig.from_config(vanilla.get_config(size).model)
    assert cfg.pad_row and cfg.input_vocab_size == 264
  bpe = importlib.import_module("experiments.hat_tables.bpe_lm").get_config("width=32,vocab=512")
  cfg = DecoderLMConfig.from_config(bpe.model)
  assert (cfg.vocab_size, cfg.input_vocab_size, cfg.mask_by_index) == (512, 512, True)
