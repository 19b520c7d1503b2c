"""Multi-scale residual VQ tokenizer (VAR's VQVAE) on MNIST 16x16. `:small` (default) or `:tiny`, e.g.

  python -m hat_jax.main --config=configs/vqvae.py:small --workdir=runs/vqvae_small --mode=train_and_sample

The run's checkpoints are the tokenizer: configs/var.py and configs/raster_ar.py restore the latest
step's params from `config.tokenizer.workdir` (default `runs/vqvae_<size>`, this run's --workdir).
`--mode=sample` writes a grid of test images over their reconstructions into `sample.output_dir`.
Images: MNIST 28x28 zero-padded to 32x32 and 2x2 average-pooled to 16x16 (hat_jax/data/images.py);
latent 8x8 (one stride-2 level), scales (1, 2, 3, 4, 6, 8) = 130 tokens, one shared 256-entry codebook.
`:tiny` uses synthetic images (no download) and a few steps, for smoke tests.

`:var256` is the shape of VAR's own tokenizer at 256 px (Tian et al. 2024; FoundationVision/VAR
`models/__init__.py::build_vae_var`, `vae_ch160v4096z32.pth`): RGB 256x256, base width ch=160, ch_mult (1, 1, 2, 2, 4) (16x downsampling to a 16x16 latent),
Cvae = 32, one 4096-entry codebook, scales (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) = 680 tokens, 4 shared phi
convs (quant_resi 0.5), beta 0.25. Its quantizer matches VAR's exactly (codebook 4096 x 32 plus 4 phi
convs = 36,992 params, the paper's "0.03M"); its conv encoder/decoder are this project's simplified
ones (one ResBlock per level, no attention blocks; VAR: 2 ResBlocks per level and self-attention), so
the tokenizer's total is smaller than VAR's. The VQVAE's params are not part of VAR's model count.
VAR released no VQVAE training recipe (trained on OpenImages): batch, steps and lr here are
placeholders. No RGB 256 px dataset exists in hat_jax.data.images (sources "mnist", 16/32 px
grayscale, and "synthetic", grayscale): the data block names "synthetic" at 256 px so the config is
complete for compiling, but a training run needs an RGB loader first. bfloat16 is not applicable (the
VQVAE has no compute-dtype field); pure-FSDP mesh as the other paper-scale configs.
"""

import ml_collections

from configs import common

# name: (ch, vocab, z_channels, batch, steps, lr, data source)
SIZES = {
    "tiny": (8, 32, 8, 8, 4, 1e-3, "synthetic"),
    "small": (32, 256, 16, 32, 600, 2e-3, "mnist"),
    "var256": (160, 4096, 32, 256, 100_000, 1e-4, "synthetic"),
}
# Model shapes other than (ch, vocab, z_channels); sizes not listed use `vq_model`'s defaults (MNIST 16x16).
SHAPES = {
    "var256": dict(image_size=256, channels=3, ch_mult=(1, 1, 2, 2, 4), scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                   num_phi=4),
}


def image_data(source: str, batch: int, image_size: int = 16) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source=source, image_size=image_size, cache_dir="", max_train_examples=0, eval_examples=2000,
      eval_batch_size=batch, synthetic_examples=512))


def vq_model(ch: int, vocab: int, z_channels: int, image_size: int = 16, channels: int = 1,
             ch_mult: tuple[int, ...] = (1, 2), scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8),
             num_phi: int = 2) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      image_size=image_size, channels=channels, ch=ch, ch_mult=ch_mult, z_channels=z_channels, vocab_size=vocab,
      scales=scales, num_phi=num_phi, phi_ratio=0.5, beta=0.25))


def size_model(size: str) -> ml_collections.ConfigDict:
  """The model config of a SIZES row (with its SHAPES entry, if any)."""
  ch, vocab, z, *_ = SIZES[size]
  return vq_model(ch, vocab, z, **SHAPES.get(size, {}))


def tokenizer(size: str) -> ml_collections.ConfigDict:
  """`config.tokenizer` for tasks over VQ tokens: the model config of this file's `size`, the run whose
  latest checkpoint holds its params (`workdir`, the default --workdir of that run) and the --config
  that trains it (named in the error when the run is missing)."""
  return ml_collections.ConfigDict(dict(model=size_model(size), workdir=f"runs/vqvae_{size}",
                                        train_config=f"configs/vqvae.py:{size}"))


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
  *_, batch, steps, lr, source = common.size_row(SIZES, arg.size, "vqvae")
  config = common.base_config("vqvae", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  config.logical_axis_rules = common.default_rules(*CONV_RULES)
  config.model = size_model(arg.size)
  config.data = image_data(source, batch, config.model.image_size)
  config.sample = sample_block(f"runs/vqvae_{arg.size}")
  if arg.size in SHAPES:  # paper scale: pure FSDP (module docstring)
    config.mesh = common.mesh_defaults(data=1, fsdp=-1, tensor=1)
  return config
