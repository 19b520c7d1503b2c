"""Raster-order AR baseline: one token per step over the same VQ tokens as VAR (`model.tokens="vq"`,
the 130 multi-scale tokens flattened coarse to fine, so its NLL is directly comparable to VAR's) or over
the 16x16 pixels (`model.tokens="pixels"`, comparable to the Axial Transformer's bits/dim).

  python -m hat_jax.main --config=configs/raster_ar.py:small --workdir=runs/raster_ar_small --mode=train_and_sample

reads the tokenizer from the run of configs/vqvae.py:small in runs/vqvae_small (`config.tokenizer.workdir`,
as configs/var.py); `tokens=pixels` needs none.

Same transformer width/depth as configs/var.py (plain pre-norm RoPE stack, class token first).
"""

import ml_collections

from configs import common
from configs.block_transformer import stack
from configs.var import SIZES
from configs.vqvae import image_data, sample_block, tokenizer, train_block


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0, tokens="vq")
  d, layers, head_dim, batch, steps, lr = common.size_row(SIZES, arg.size, "raster_ar")
  config = common.base_config("raster_ar", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  config.model = ml_collections.ConfigDict(dict(stack=stack(d, layers, head_dim), tokens=arg.tokens,
                                                attention_impl="auto", cond_drop=0.1))
  config.tokenizer = tokenizer(arg.size)
  config.data = image_data("synthetic" if arg.size == "tiny" else "mnist", batch)
  config.sample = sample_block(f"runs/raster_ar_{arg.size}", cfg_scale=2.0)
  return config
