"""HMAR (Markovian next-scale prediction with masked steps) over the frozen multi-scale VQ tokens of
configs/vqvae.py -- the same tokenizer run as configs/var.py. `:small` or `:tiny`.

  python -m hat_jax.main --config=configs/vqvae.py:small --workdir=runs/vqvae_small --mode=train_and_sample
  python -m hat_jax.main --config=configs/hmar.py:small --workdir=runs/hmar_small --mode=train_and_sample
  python -m hat_jax.main --config=configs/hmar.py:small --workdir=runs/hmar_small --mode=sample \
      --config.sample.steps=1,1,2,3,4,6                  # another schedule, no retraining

VAR's model (configs/var.py: same sizes, AdaLN blocks, class embedding, 10% label dropout for CFG) with
HMAR's block-diagonal Markovian mask over the 6 scales, a token / MASK embedding, and MaskGIT training
within each scale (`model.full_mask_prob`: the share of (image, scale) pairs trained fully masked, the
one-step next-scale objective). `sample.steps` is the number of masked steps per scale (one int per
scale, or one for all: "1,1,1,2,3,4" = 12 network passes against VAR's 6), used by --mode=sample and by
the eval's `bits_per_image_steps`; `sample.choice_temperature` scales the Gumbel noise on MaskGIT's
confidence. --mode=sample also writes an inpainting grid (the lower half of test images regenerated).
The tokenizer is the latest checkpoint of the VQVAE run in `config.tokenizer.workdir` (default
runs/vqvae_<size>).
"""

import ml_collections

from configs import common
from configs.block_transformer import stack
from configs.var import SIZES
from configs.vqvae import image_data, sample_block, tokenizer, train_block

DEFAULT_SCHEDULE = "1,1,1,2,3,4"  # masked steps per scale for the scales (1, 2, 3, 4, 6, 8)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  d, layers, head_dim, batch, steps, lr = common.size_row(SIZES, arg.size, "hmar")
  config = common.base_config("hmar", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  model_stack = stack(d, layers, head_dim)
  model_stack.qk_norm = True
  config.model = ml_collections.ConfigDict(dict(stack=model_stack, attention_impl="auto", cond_drop=0.1,
                                                dtype="float32", full_mask_prob=0.2))
  config.tokenizer = tokenizer(arg.size)
  config.data = image_data("synthetic" if arg.size == "tiny" else "mnist", batch)
  config.sample = sample_block(f"runs/hmar_{arg.size}", cfg_scale=2.0)
  config.sample.steps = DEFAULT_SCHEDULE
  config.sample.choice_temperature = 1.0
  return config
