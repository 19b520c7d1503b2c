"""Vanilla byte-level transformer, the Block Transformer's baseline (same layers). `:small` or `:tiny`.

Trained and scored on the same block-aligned rows and target bytes as configs/block_transformer.py
(hat_jax/data/blocks.py), without random first-block padding. The model is a
`hat_jax.models.decoder_lm.DecoderLM` whose input table has the rows' pad token (`pad_row`), padded to
264 rows for tensor parallelism, as in configs/block_transformer.py.

Paper scale (the vanilla baselines of the Block Transformer paper's Table 1, Ho et al. 2024,
arXiv:2406.02657, Table 3), named by the paper's total
size (Pythia models of the same shape, 50K-token vocabulary):

  size          layers x width, heads     non-embedding   LR     batch
  vanilla_31m   6 x 256, 8 heads          5M              1e-3   256
  vanilla_70m   6 x 512, 8 heads          19M             1e-3   256
  vanilla_160m  12 x 768, 12 heads        85M             6e-4   256
  vanilla_410m  24 x 1024, 16 heads       302M            3e-4   256

Context 2048 (bytes here), 572,000 steps, warm-up 3,000, cosine to 10 %, AdamW (0.9, 0.95), weight decay
0.1, clip 1.0 (configs/block_transformer.py `paper_train`). Byte-level (vocab 256), so only the
NON-embedding counts are matched: the paper's GPT-NeoX layers hold 12 D^2 each (GELU MLP of 4 x D);
ours use SwiGLU with `mlp_dim` = 8/3 x D, the same 8 D^2 in the MLP. bfloat16 compute, float32 master
weights, scanned stacks (full remat at width 1024), Pallas attention, pure-FSDP mesh.
"""

import ml_collections

from configs import common
from configs.block_transformer import PAPER_SEQ_LEN, byte_data, layer_params, paper_decoder_stack, paper_train, stack

# name: (d, layers, head_dim, seq_len, batch, steps, lr)
SIZES = {
    "tiny": (32, 1, 16, 32, 4, 20, 1e-3),
    "small": (128, 3, 32, 256, 8, 300, 3e-3),
    "xsmall": (64, 3, 32, 256, 8, 300, 3e-3),
    "xxsmall": (32, 2, 16, 256, 8, 300, 3e-3),
}

# Paper scale (module docstring). name: (d, layers, lr, batch)
PAPER_SIZES = {
    "vanilla_31m": (256, 6, 1e-3, 256),
    "vanilla_70m": (512, 6, 1e-3, 256),
    "vanilla_160m": (768, 12, 6e-4, 256),
    "vanilla_410m": (1024, 24, 3e-4, 256),
}
PAPER_NON_EMBEDDING = {"vanilla_31m": 5e6, "vanilla_70m": 19e6, "vanilla_160m": 85e6, "vanilla_410m": 302e6}


def paper_non_embedding(size: str) -> int:
  """Unrounded non-embedding count of a paper size (12 L D^2; e.g. 24 x 12 x 1024^2 = 302M)."""
  d, layers, *_ = PAPER_SIZES[size]
  return layer_params(d, layers)


def paper_config(size: str, seed: int) -> ml_collections.ConfigDict:
  d, layers, lr, batch = PAPER_SIZES[size]
  config = common.base_config("vanilla_lm", seed=seed)
  config.train = paper_train(lr, batch)
  config.mesh = common.pod_mesh()
  config.model = ml_collections.ConfigDict(dict(decoder=paper_decoder_stack(d, layers), vocab_size=256, pad_row=True,
                                                vocab_pad_to_multiple=8, attention_impl="pallas", dtype="bfloat16"))
  config.data = byte_data(PAPER_SEQ_LEN, batch, 4 * batch, random_pad=False)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=256, temperature=0.8, top_k=0, top_p=1.0))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  if arg.size in PAPER_SIZES:
    return paper_config(arg.size, arg.seed)
  d, layers, head_dim, seq_len, batch, steps, lr = common.size_row({**SIZES, **PAPER_SIZES}, arg.size, "vanilla_lm")
  config = common.base_config("vanilla_lm", seed=arg.seed)
  config.train = common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20),
      log_every=max(1, steps // 20), eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 2))
  config.model = ml_collections.ConfigDict(dict(decoder=stack(d, layers, head_dim), vocab_size=256, pad_row=True,
                                                vocab_pad_to_multiple=8, attention_impl="auto", dtype="float32"))
  config.data = byte_data(seq_len, batch, 8 if arg.size == "tiny" else 256, random_pad=False)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=64, temperature=0.8, top_k=0, top_p=1.0))
  return config
