"""The image chain through the generic trainer: tokenizer trained and exported, VAR trained on its tokens,
class-conditional samples written (tiny configs, synthetic images)."""

import pytest

from configs import var as var_config
from configs import vqvae as vqvae_config
from hat_jax.train import trainer


def small_data(config):
  config.data.synthetic_examples = 64  # the tiny configs' synthetic images; eval covers all of them
  config.data.eval_examples = 16
  return config


def test_vqvae_export_then_var_train_and_sample(tmp_path):
  vq = small_data(vqvae_config.get_config("tiny"))
  vq.train.steps = 2
  vq.sample.output_dir = str(tmp_path / "vq_out")
  trainer.train(vq, str(tmp_path / "vq"))
  trainer.sample(vq, str(tmp_path / "vq"))
  params_path = tmp_path / "vq_out" / "vqvae_params.npz"
  assert params_path.exists()

  var = small_data(var_config.get_config("tiny"))
  var.train.steps = 2
  var.tokenizer.params_path = str(params_path)
  var.sample.output_dir = str(tmp_path / "var_out")
  final = trainer.train(var, str(tmp_path / "var"))
  assert final["step"] == 2 and "eval/bits_per_image" in final
  assert "var_samples.png" in trainer.sample(var, str(tmp_path / "var"))
  assert (tmp_path / "var_out" / "var_samples.png").read_bytes()[:4] == b"\x89PNG"

  var.tokenizer.params_path = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="Train the tokenizer"):
    trainer.train(var, str(tmp_path / "var_missing"))
