"""Vanilla byte-level transformer, the Block Transformer's baseline (same layers). `:small` or `:tiny`.

Trained and scored on the same block-aligned rows and target bytes as configs/block_transformer.py
(hat_jax/train/block_tasks.py), without random first-block padding. Input table padded to 264 rows for
tensor parallelism, as in configs/block_transformer.py.
"""

import ml_collections

from configs import common
from configs.block_transformer import byte_data, stack

# name: (d, layers, head_dim, seq_len, batch, steps, lr)
SIZES = {
    "tiny": (32, 1, 16, 32, 4, 20, 1e-3),
    "small": (128, 3, 32, 256, 8, 300, 3e-3),
    "xsmall": (64, 3, 32, 256, 8, 300, 3e-3),
    "xxsmall": (32, 2, 16, 256, 8, 300, 3e-3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  d, layers, head_dim, seq_len, batch, steps, lr = common.size_row(SIZES, arg.size, "vanilla_lm")
  config = common.base_config("vanilla_lm", seed=arg.seed)
  config.train = common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20),
      log_every=max(1, steps // 20), eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 2))
  config.model = ml_collections.ConfigDict(dict(decoder=stack(d, layers, head_dim), vocab_size=256,
                                                vocab_pad_to_multiple=8, attention_impl="xla", dtype="float32"))
  config.data = byte_data(seq_len, batch, 8 if arg.size == "tiny" else 256, random_pad=False)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=64, temperature=0.8, top_k=0, top_p=0.0))
  return config
