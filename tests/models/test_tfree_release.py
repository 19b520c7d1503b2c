"""The released TFree-HAT architecture (`variant="released"`) and its checkpoints (`hat_jax.convert`).

No released weights can be downloaded here, so equality is shown on random checkpoints in the exact
released key layout against a float64 numpy forward pass written from the released code's semantics
(`tfree_release_reference.py`), for two configurations: cross-attention in every decoder layer with GQA
and QK-norm, and in layer 0 only without them.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from hat_jax import convert
from hat_jax.data.splitter import WordSplitter
from hat_jax.generate.hat_sampler import HATSampler
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models.hat import HAT, HATConfig
from tests import jit_helpers
from tests.models import tfree_release_reference as ref

CONFIGS = {"every_layer_gqa_qk_norm": dict(cross_attn_every_layer=True, gqa_qk_norm=True),
           "layer0_only_plain": dict(cross_attn_every_layer=False, gqa_qk_norm=False)}
EOT = 192  # the released special_token_dict {"<|eot_id|>": 192}: a one-byte word


def _model(hf_config: dict) -> tuple[HATConfig, dict]:
  model, max_word_bytes = convert.model_config_from_hf(hf_config)
  return HATConfig.from_config(model, max_word_bytes), model


def _words(text: str, max_word_bytes: int) -> list[bytes]:
  """Words as the released splitter makes them: special tokens cut out first as one-byte words, the rest
  through hat-splitter with the config's max word size (`WordSplitter(..., special_tokens)`, checked
  against that rule spelled out here)."""
  by_hand: list[bytes] = []
  for i, part in enumerate(text.split("<|eot_id|>")):
    if i:
      by_hand.append(bytes([EOT]))
    if part:
      by_hand.extend(WordSplitter("tfree", max_word_bytes).split(part.encode()))
  words = WordSplitter("tfree", max_word_bytes, {"<|eot_id|>": EOT}).split(text.encode())
  assert words == by_hand
  return words


DOCS = ["Hello, wonderful world! The extraordinarily long words exceed the window.",
        "K\u00e4se und Br\u00f6tchen<|eot_id|>Gr\u00fc\u00df dich \U0001F600 ok",
        "a<|eot_id|>"]


def _packed(docs_words: list[list[bytes]]) -> dict:
  """One row holding the documents back to back (segment ids 1, 2, ...; positions restart per document)."""
  cols = {k: [] for k in ("bytes", "positions", "segment_ids", "word_ids", "word_starts", "word_lengths",
                          "word_positions", "word_segment_ids")}
  start = 0
  for d, words in enumerate(docs_words):
    n = sum(len(w) for w in words)
    data = b"".join(words)
    cols["bytes"] += list(data)
    cols["positions"] += list(range(n))
    cols["segment_ids"] += [d + 1] * n
    offsets = np.cumsum([0] + [len(w) for w in words])[:-1]
    cols["word_ids"] += list(len(cols["word_lengths"]) + np.repeat(np.arange(len(words)), [len(w) for w in words]))
    cols["word_starts"] += list(start + offsets)
    cols["word_lengths"] += [len(w) for w in words]
    cols["word_positions"] += list(range(len(words)))
    cols["word_segment_ids"] += [d + 1] * len(words)
    start += n
  return {k: jnp.asarray([v], jnp.int32) for k, v in cols.items()}


def _params(cfg: HATConfig, model: dict, weights: dict) -> dict:
  abstract = nn.unbox(jax.eval_shape(HAT(cfg).init, jax.random.key(0), _packed([[b"ab"]])))["params"]
  return {"params": convert.hf_to_params(weights.__getitem__, sorted(weights), model, abstract)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_the_released_reference(name):
  hf = ref.tiny_release_config(**CONFIGS[name])
  weights = ref.random_release_weights(hf, seed=1)
  cfg, model = _model(hf)
  params = _params(cfg, model, weights)
  docs = [_words(d, cfg.max_word_bytes) for d in DOCS]
  assert max(len(w) for ws in docs for w in ws) > cfg.encoder.window  # words longer than the window
  batch = _packed(docs)
  logits = np.asarray(jit_helpers.apply(HAT(cfg), params, batch))[0]  # [S, 256]
  start = 0
  for words in docs:
    data = b"".join(words)
    expected = ref.reference_logits(weights, hf, np.frombuffer(data, np.uint8).astype(np.int64),
                                    [len(w) for w in words])
    got = logits[start:start + len(data)]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    start += len(data)


def test_gradients_flow_through_the_released_model():
  hf = ref.tiny_release_config(**CONFIGS["every_layer_gqa_qk_norm"])
  cfg, model = _model(hf)
  params = _params(cfg, model, ref.random_release_weights(hf, seed=2))
  batch = _packed([_words(DOCS[0], cfg.max_word_bytes)])
  batch["targets"] = jnp.roll(batch["bytes"], -1, axis=1)
  batch["loss_mask"] = jnp.ones_like(batch["bytes"], jnp.float32)
  grads = jax.jit(jax.grad(lambda p: HAT(cfg).apply(p, batch, method=HAT.loss_and_metrics)[0]))(params)
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
  assert all(np.isfinite(v).all() for v in flat.values())
  used = [k for k in flat if "cross']['q_proj" not in k and "cross']['k_proj" not in k and "query_norm" not in k
          and "cross']['norm_" not in k]
  assert all(np.abs(flat[k]).max() > 0 for k in used), [k for k in used if not np.abs(flat[k]).max() > 0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_hf_then_to_hf_is_bit_exact(name):
  hf = ref.tiny_release_config(**CONFIGS[name])
  weights = {k: v.astype(ml_dtypes.bfloat16) if i % 2 else v
             for i, (k, v) in enumerate(sorted(ref.random_release_weights(hf, seed=3).items()))}
  cfg, model = _model(hf)
  params = _params(cfg, model, weights)
  dtypes = {k: str(v.dtype) for k, v in weights.items()}
  back = dict(convert.params_to_hf(params["params"], model, dtypes))
  assert sorted(back) == sorted(weights)
  for key, value in weights.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert back[key].tobytes() == value.tobytes(), key


def test_wrong_or_missing_keys_and_shapes_are_errors_naming_them():
  hf = ref.tiny_release_config(**CONFIGS["layer0_only_plain"])
  weights = ref.random_release_weights(hf, seed=4)
  cfg, model = _model(hf)
  missing = dict(weights)
  del missing["decoder.decoder_layers.0.kv_norm.weight"]
  with pytest.raises(convert.ConversionError, match=r"1 missing keys \['decoder.decoder_layers.0.kv_norm.weight'\]"):
    _params(cfg, model, missing)
  with pytest.raises(convert.ConversionError, match=r"1 unknown keys \['encoder.layers.9.mlp.up_proj.weight'\]"):
    _params(cfg, model, {**weights, "encoder.layers.9.mlp.up_proj.weight": np.zeros(3)})
  key = "backbone.layers.1.mlp.down_proj.weight"
  with pytest.raises(convert.ConversionError, match=rf"{key}: shape \(\d+, 7\) does not fit our "
                                                    r"backbone_stack/layer_1/mlp/down/kernel"):
    _params(cfg, model, {**weights, key: np.zeros((weights[key].shape[0], 7), np.float32)})
  with pytest.raises(convert.ConversionError, match="not a released TFree-HAT config: no 'decoder_config'"):
    convert.model_config_from_hf({k: v for k, v in hf.items() if k != "decoder_config"})


def test_released_window_counts_one_more_key():
  hf = ref.tiny_release_config(**CONFIGS["layer0_only_plain"])
  cfg, _ = _model(hf)
  assert cfg.encoder.window == hf["encoder_config"]["sliding_window"] + 1
  assert cfg.decoder.window == hf["decoder_config"]["sliding_window"] + 1


@pytest.mark.parametrize("name", [pytest.param("every_layer_gqa_qk_norm"),
                                  pytest.param("layer0_only_plain", marks=pytest.mark.slow)])  # ~10 s each
def test_cached_generation_equals_uncached_forward(name):
  hf = ref.tiny_release_config(**CONFIGS[name])
  cfg, model = _model(hf)
  params = _params(cfg, model, ref.random_release_weights(hf, seed=5))
  sampler = HATSampler(cfg, params, WordSplitter("tfree", cfg.max_word_bytes), max_total_bytes=64)
  gens = sampler.generate([b"Hello wo", "Gr\u00fc\u00df".encode(), b""], 16, jax.random.key(0),
                          SamplingConfig(temperature=1.0), record_logits=True, stop_at_eod=False)
  for g in gens:
    full = b"".join(g.words)
    uncached = np.asarray(jit_helpers.apply(HAT(cfg), params, _packed([g.words])))[0, :len(full) - 1]
    np.testing.assert_allclose(g.logits, uncached, atol=1e-4)


def test_sampler_without_bos_equals_the_reference_on_the_raw_prompt():
  """How a converted released model samples (data.bos=False): the prompt's own bytes and words, no BOS word,
  the special token as its one byte; the cached sampler's logits equal the numpy reference of the released
  forward pass over exactly those bytes (prompt + generated)."""
  hf = ref.tiny_release_config(**CONFIGS["every_layer_gqa_qk_norm"])
  weights = ref.random_release_weights(hf, seed=7)
  cfg, model = _model(hf)
  params = _params(cfg, model, weights)
  splitter = WordSplitter("tfree", cfg.max_word_bytes, {"<|eot_id|>": EOT})
  sampler = HATSampler(cfg, params, splitter, max_total_bytes=64, bos=False)
  prompts = ["Hello wo", "Gr\u00fc\u00df<|eot_id|>Ok"]
  gens = sampler.generate([p.encode() for p in prompts], 12, jax.random.key(1), SamplingConfig(temperature=1.0),
                          record_logits=True, stop_at_eod=False)
  for prompt, g in zip(prompts, gens):
    words = _words(prompt, cfg.max_word_bytes)  # the released splitter's words of the raw prompt
    raw = b"".join(words)  # the prompt's bytes, <|eot_id|> as byte 192
    full = raw + g.generated
    assert b"".join(g.words) == full and g.words[:len(words) - 1] == words[:-1] and len(g.generated) == 12
    expected = ref.reference_logits(weights, hf, np.frombuffer(full, np.uint8).astype(np.int64),
                                    [len(w) for w in g.words])[:len(full) - 1]
    np.testing.assert_allclose(g.logits, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def _write_hf_directory(directory, hf: dict, weights: dict) -> None:
  """A released-style HF directory: config.json and two safetensors shards with their index."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(hf))
  keys = sorted(weights)
  shard = lambda i: f"model-0000{1 if i < len(keys) // 2 else 2}-of-00002.safetensors"  # noqa: E731
  for name in sorted({shard(i) for i in range(len(keys))}):
    save_file({k: weights[k] for i, k in enumerate(keys) if shard(i) == name}, str(directory / name))
  (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      k: shard(i) for i, k in enumerate(keys)}}))


def _converted(tmp_path):
  hf = ref.tiny_release_config(**CONFIGS["every_layer_gqa_qk_norm"])
  weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in ref.random_release_weights(hf, seed=6).items()}
  _write_hf_directory(tmp_path / "hf", hf, weights)
  workdir = str(tmp_path / "run")
  assert convert.main(["from-hf", str(tmp_path / "hf"), "--out", workdir,
                       "--base_config", "configs/hat.py:test,corpus=toy"]) == 0
  from hat_jax import sweep  # pylint: disable=g-import-not-at-top
  config = sweep.load_config(os.path.join(workdir, "config.py"))  # what `hat_jax.main --config=` loads
  return hf, weights, workdir, config


def test_from_hf_then_to_hf_cli_is_bit_exact(tmp_path, capsys):
  hf, weights, workdir, config = _converted(tmp_path)
  assert config.model.variant == "released" and config.data.max_word_bytes == hf["max_word_size"]
  assert dict(config.data.special_tokens) == hf["special_token_dict"] == {"<|eot_id|>": EOT}
  assert config.data.bos is False  # the released framing: documents start with their text, no BOS byte
  out = str(tmp_path / "back")
  capsys.readouterr()
  assert convert.main(["to-hf", workdir, "--out", out]) == 0
  assert "warning" not in capsys.readouterr().out
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  index = json.loads(open(os.path.join(out, "model.safetensors.index.json")).read())["weight_map"]
  assert sorted(index) == sorted(weights)
  for key, value in weights.items():
    with safe_open(os.path.join(out, index[key]), framework="np") as f:
      back = f.get_tensor(key)
    assert back.dtype == value.dtype and back.tobytes() == value.tobytes(), key
  assert json.loads(open(os.path.join(out, "config.json")).read()) == hf
  hf_config = open(os.path.join(workdir, "hf_config.json")).read()
  assert convert.main(["from-hf", str(tmp_path / "hf"), "--out", workdir]) == 1  # never over an existing run
  assert open(os.path.join(workdir, "hf_config.json")).read() == hf_config  # refused before writing anything
  # A converted checkpoint is fingerprinted like any other: damage is refused, not written back out.
  integrity_file = os.path.join(workdir, "checkpoints", "0", "integrity", "metadata")
  stored = json.loads(open(integrity_file).read())
  stored["state"]["['params']['params']['lm_head']['kernel']"][0] ^= 1
  open(integrity_file, "w").write(json.dumps(stored))
  assert convert.main(["to-hf", workdir, "--out", str(tmp_path / "back2")]) == 1
  assert not os.path.exists(tmp_path / "back2")


def test_to_hf_warns_when_the_run_used_bos(tmp_path, monkeypatch):
  from hat_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  _, _, workdir, _ = _converted(tmp_path)
  stored = ckpt_lib.Checkpointer.restore_config

  def with_bos(self, step=None):  # as if the run had been trained with --config.data.bos=True
    config = stored(self, step)
    config["data"]["bos"] = True
    return config

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_config", with_bos)
  said = []
  convert.to_hf(workdir, str(tmp_path / "back"), progress=said.append)
  assert any(line.startswith("warning: ") and "data.bos=True" in line and "never prepends" in line for line in said)


@pytest.mark.slow  # two compiles of the trainer (~25 s)
def test_converted_checkpoint_evaluates_and_trains(tmp_path):
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top
  _, _, workdir, config = _converted(tmp_path)
  evaluated = trainer.evaluate(config, workdir)
  assert evaluated["step"] == 0 and np.isfinite(evaluated["eval/loss"])
  config.train.steps = 2
  result = trainer.train(config, workdir, devices=jax.devices()[:1])  # params-only checkpoint: fresh optimizer
  assert result["step"] == 2


def test_from_hf_llama_puts_the_llama_blocks_in_the_backbone(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from hat_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  llama = dict(model_type="llama", hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, rms_norm_eps=1e-5, rope_theta=500000.0, vocab_size=100, mlp_bias=False,
               hidden_act="silu", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
  rng = np.random.default_rng(0)
  shapes = {"self_attn.q_proj.weight": (48, 48), "self_attn.k_proj.weight": (24, 48), "self_attn.v_proj.weight": (24, 48),
            "self_attn.o_proj.weight": (48, 48), "mlp.gate_proj.weight": (64, 48), "mlp.up_proj.weight": (64, 48),
            "mlp.down_proj.weight": (48, 64), "input_layernorm.weight": (48,), "post_attention_layernorm.weight": (48,)}
  tensors = {f"model.layers.{i}.{k}": rng.normal(size=v).astype(np.float32) for i in range(2) for k, v in shapes.items()}
  tensors.update({"model.embed_tokens.weight": np.zeros((100, 48), np.float32), "model.norm.weight": np.ones(48, np.float32),
                  "lm_head.weight": np.zeros((100, 48), np.float32)})
  (tmp_path / "llama").mkdir()
  (tmp_path / "llama" / "config.json").write_text(json.dumps(llama))
  save_file(tensors, str(tmp_path / "llama" / "model.safetensors"))
  out = str(tmp_path / "hat")
  assert convert.main(["from-hf-llama", str(tmp_path / "llama"), "--out", out,
                       "--base_config", "configs/hat.py:test,corpus=toy"]) == 0
  with ckpt_lib.Checkpointer(os.path.join(out, "checkpoints"), keep=None) as ckpt:
    saved = ckpt.restore_config()
    assert saved["model"]["backbone"]["d_model"] == 48 and saved["model"]["backbone"]["rope_scaling"] == [8.0, 1.0, 4.0, 64]
    assert saved["data"]["bos"] is True  # a HAT trained by our pipeline keeps the base config's framing
    stored = ckpt._manager.item_metadata(0)["state"].tree["params"]  # pylint: disable=protected-access
    _, params = ckpt.restore_params(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored))
  layer1 = params["params"]["backbone_stack"]["layer_1"]
  np.testing.assert_array_equal(layer1["attn"]["k_proj"]["kernel"], tensors["model.layers.1.self_attn.k_proj.weight"].T.reshape(48, 2, 12))
  np.testing.assert_array_equal(layer1["mlp"]["down"]["kernel"], tensors["model.layers.1.mlp.down_proj.weight"].T)
  bad = dict(llama, model_type="mistral")
  (tmp_path / "llama" / "config.json").write_text(json.dumps(bad))
  assert convert.main(["from-hf-llama", str(tmp_path / "llama"), "--out", str(tmp_path / "x"),
                       "--base_config", "configs/hat.py:test,corpus=toy"]) == 1
