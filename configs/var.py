"""VAR (next-scale prediction) over the frozen multi-scale VQ tokens of configs/vqvae.py. `:small` or `:tiny`.

  python -m hat_jax.main --config=configs/var.py:small --workdir=runs/var --mode=train_and_sample \
      --config.tokenizer.params_path=runs/vqvae_small/vqvae_params.npz

AdaLN transformer, block-causal over the 6 scales (130 positions), class embedding as start token and
AdaLN condition, 10% label dropout for CFG; sampling ramps CFG linearly to `sample.cfg_scale`.
`:tiny` expects a tokenizer exported by configs/vqvae.py:tiny (runs/vqvae_tiny/vqvae_params.npz).
"""

import ml_collections

from configs import common
from configs.block_transformer import stack
from configs.vqvae import image_data, sample_block, tokenizer, train_block

# name: (d_model, layers, head_dim, batch, steps, lr)
SIZES = {
    "tiny": (32, 1, 16, 8, 4, 1e-3),
    "small": (64, 2, 32, 32, 800, 2e-3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  d, layers, head_dim, batch, steps, lr = common.size_row(SIZES, arg.size, "var")
  config = common.base_config("var", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  model_stack = stack(d, layers, head_dim)
  model_stack.qk_norm = True
  config.model = ml_collections.ConfigDict(dict(stack=model_stack, attention_impl="xla", cond_drop=0.1,
                                                dtype="float32"))
  config.tokenizer = tokenizer(arg.size, f"runs/vqvae_{arg.size}/vqvae_params.npz")
  config.data = image_data("synthetic" if arg.size == "tiny" else "mnist", batch)
  config.sample = sample_block(f"runs/var_{arg.size}", cfg_scale=2.0)
  return config
