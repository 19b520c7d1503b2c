"""The image chain through the generic trainer: a tokenizer trained, VAR trained on its tokens (restored from
the tokenizer run's own checkpoints), class-conditional samples written (tiny configs, synthetic images);
a missing, mismatched or damaged tokenizer run is a clear error."""

import json

import numpy as np
import pytest

from configs import raster_ar as raster_config
from configs import var as var_config
from configs import vqvae as vqvae_config
from hat_jax.train import registry, trainer
from hat_jax.train.checkpoint import CheckpointCorruptError


def small_data(config):
  config.data.synthetic_examples = 64  # the tiny configs' synthetic images; eval covers all of them
  config.data.eval_examples = 16
  return config


def test_vqvae_run_then_var_train_and_sample(tmp_path):
  var = small_data(var_config.get_config("tiny"))
  var.train.steps = 2
  var.tokenizer.workdir = str(tmp_path / "vq")
  var.sample.output_dir = str(tmp_path / "var_out")
  with pytest.raises(FileNotFoundError, match=r"No tokenizer run in .*vq.*python -m hat_jax.main "
                                              r"--config=configs/vqvae.py:tiny --workdir=.*vq --mode=train"):
    trainer.train(var, str(tmp_path / "var"))
  assert not (tmp_path / "vq").exists()  # looking for the run left nothing behind

  vq = small_data(vqvae_config.get_config("tiny"))
  vq.train.steps = 2
  vq.sample.output_dir = str(tmp_path / "vq_out")
  trainer.train(vq, str(tmp_path / "vq"))
  assert "vqvae_reconstructions.png" in trainer.generate(vq, str(tmp_path / "vq"))

  final = trainer.train(var, str(tmp_path / "var"))
  assert final["step"] == 2 and "eval/bits_per_image" in final
  assert "var_samples.png" in trainer.generate(var, str(tmp_path / "var"))
  assert (tmp_path / "var_out" / "var_samples.png").read_bytes()[:4] == b"\x89PNG"

  # The task read the tokenizer's final params, and tokens are keyed on them.
  task = registry.make_task(var)
  _, vq_params, _ = trainer.restore_params(vq, str(tmp_path / "vq"))
  np.testing.assert_array_equal(task.vq_params["params"]["quantizer"]["codebook"],
                                np.asarray(vq_params["params"]["quantizer"]["codebook"]))

  other = small_data(var_config.get_config("tiny"))
  other.tokenizer.workdir = str(tmp_path / "vq")
  other.tokenizer.model.vocab_size = 64
  with pytest.raises(ValueError, match=r"another model than config.tokenizer.model .*'vocab_size': \(32, 64\)"):
    _ = registry.make_task(other).vq_params
  other.tokenizer.workdir = str(tmp_path / "var")
  with pytest.raises(ValueError, match="is a 'var' run, not a VQVAE tokenizer run"):
    _ = registry.make_task(other).vq_params

  # A damaged tokenizer checkpoint is refused, naming the way out (a fresh task: vq_params is cached).
  integrity_file = tmp_path / "vq" / "checkpoints" / "2" / "integrity" / "metadata"
  stored = json.loads(integrity_file.read_text())
  stored["state"]["['params']['params']['quantizer']['codebook']"][0] ^= 1
  integrity_file.write_text(json.dumps(stored))
  damaged = small_data(var_config.get_config("tiny"))
  damaged.tokenizer.workdir = str(tmp_path / "vq")
  with pytest.raises(CheckpointCorruptError, match=r"Checkpoint step 2 .*\['params'\]\['params'\]\['quantizer'\]\['codebook'\]"
                     r".* It is the tokenizer of this run .*on_bad_checkpoint=fallback"):
    _ = registry.make_task(damaged).vq_params


def test_raster_ar_on_pixels_trains_and_samples(tmp_path):
  """The raster AR is a DecoderLM with class tokens: trained through the generic trainer on raw pixels
  (no tokenizer), near 8 bits per pixel after two steps (uniform over 256 values), and sampled to a PNG."""
  config = small_data(raster_config.get_config("size=tiny,tokens=pixels"))
  config.train.steps = 2
  config.sample.output_dir = str(tmp_path / "out")
  final = trainer.train(config, str(tmp_path / "run"))
  assert final["step"] == 2 and 7.5 < final["eval/bits_per_dim"] < 8.5
  assert "raster_ar_samples.png" in trainer.generate(config, str(tmp_path / "run"))
  assert (tmp_path / "out" / "raster_ar_samples.png").read_bytes()[:4] == b"\x89PNG"
