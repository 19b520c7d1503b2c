"""Multi-scale residual VQ tokenizer (VAR's VQVAE) on MNIST 16x16. `:small` (default) or `:tiny`, e.g.

  python -m hat_jax.main --config=configs/vqvae.py:small --workdir=runs/vqvae --mode=train_and_sample \
      --config.sample.output_dir=runs/vqvae

`--mode=sample` exports `<sample.output_dir>/vqvae_params.npz` (what configs/var.py and
configs/raster_ar.py load as the frozen tokenizer) and a grid of test images over their reconstructions.
Images: MNIST 28x28 zero-padded to 32x32 and 2x2 average-pooled to 16x16 (hat_jax/train/image_tasks.py);
latent 8x8 (one stride-2 level), scales (1, 2, 3, 4, 6, 8) = 130 tokens, one shared 256-entry codebook.
`:tiny` uses synthetic images (no download) and a few steps, for smoke tests.
"""

import ml_collections

from configs import common

# name: (ch, vocab, z_channels, batch, steps, lr, data source)
SIZES = {
    "tiny": (8, 32, 8, 8, 4, 1e-3, "synthetic"),
    "small": (32, 256, 16, 32, 600, 2e-3, "mnist"),
}


def image_data(source: str, batch: int, image_size: int = 16) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source=source, image_size=image_size, cache_dir="", max_train_examples=0, eval_examples=2000,
      eval_batch_size=batch, synthetic_examples=512))


def vq_model(ch: int, vocab: int, z_channels: int, image_size: int = 16) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      image_size=image_size, channels=1, ch=ch, ch_mult=(1, 2), z_channels=z_channels, vocab_size=vocab,
      scales=(1, 2, 3, 4, 6, 8), num_phi=2, phi_ratio=0.5, beta=0.25))


def tokenizer(size: str, params_path: str) -> ml_collections.ConfigDict:
  """`config.tokenizer` for tasks over VQ tokens: the tokenizer's model config and its exported params."""
  ch, vocab, z, *_ = SIZES[size]
  return ml_collections.ConfigDict(dict(model=vq_model(ch, vocab, z), params_path=params_path))


def sample_block(output_dir: str, cfg_scale: float = 0.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(output_dir=output_dir, per_class=4, cfg_scale=cfg_scale, top_k=0,
                                        top_p=1.0))


# Conv kernels [3, 3, in, out] are small: replicated.
CONV_RULES = (("conv_h", None), ("conv_w", None), ("conv_in", None), ("conv_out", None))


def train_block(steps: int, batch: int, lr: float) -> ml_collections.ConfigDict:
  return common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20), weight_decay=0.0,
      log_every=max(1, steps // 20), eval_every=max(1, steps // 2), checkpoint_every=max(1, steps // 2))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  ch, vocab, z, batch, steps, lr, source = common.size_row(SIZES, arg.size, "vqvae")
  config = common.base_config("vqvae", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  config.logical_axis_rules = common.default_rules(*CONV_RULES)
  config.model = vq_model(ch, vocab, z)
  config.data = image_data(source, batch)
  config.sample = sample_block(f"runs/vqvae_{arg.size}")
  return config
