"""Axial Transformer on MNIST 16x16 pixels (256 levels), class-conditional; reports test bits/dim.

  python -m hat_jax.main --config=configs/axial.py:small --workdir=runs/axial --mode=train_and_sample

Outer context: `num_outer_layers` x (unmasked row + masked column) blocks, shifted down; inner decoder:
`num_inner_layers` masked row blocks on shift_right(pixels) + context. Semi-parallel sampling row by row.
"""

import ml_collections

from configs import common
from configs.vqvae import image_data, sample_block, train_block

# name: (d_model, outer, inner, head_dim, batch, steps, lr)
SIZES = {
    "tiny": (32, 1, 1, 16, 8, 4, 1e-3),
    "small": (64, 1, 1, 16, 32, 500, 2e-3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  d, outer, inner, head_dim, batch, steps, lr = common.size_row(SIZES, arg.size, "axial")
  config = common.base_config("axial", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  config.model = ml_collections.ConfigDict(dict(
      d_model=d, num_heads=d // head_dim, head_dim=head_dim, mlp_dim=4 * d, num_outer_layers=outer,
      num_inner_layers=inner, levels=256, channels=1, num_classes=10, attention_impl="auto"))
  config.data = image_data("synthetic" if arg.size == "tiny" else "mnist", batch)
  config.sample = sample_block(f"runs/axial_{arg.size}")
  return config
