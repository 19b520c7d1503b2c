"""Block Transformer over bytes (Ho et al. 2024). `:small` (default) or `:tiny`, e.g.

  python -m hat_jax.main --config=configs/block_transformer.py:tiny --workdir=/tmp/bt \
      --config.model.decoding=summation --config.model.block_len=8

"small" is the CPU-sized model of experiments/block_throughput: block decoder 128 wide x 3 layers,
token decoder 128 wide x 3 layers, L_B = 4, prefix 2 (D_emb = 128 / 4 = 32 per byte). Optimiser as the
paper (AdamW b=(0.9, 0.95), wd 0.1, warm-up + cosine to 10 %, clip 1.0) and random first-block padding.
Rows: block-aligned single-document windows of the corpus (hat_jax/data/blocks.py).
Input embedding tables have 264 rows (256 bytes + pad, `vocab_pad_to_multiple=8`) so that tensor-parallel
sizes up to 8 shard them; the extra rows are never used, and the first 257 initialise as a 257-row table's.

Paper scale (Ho et al. 2024, arXiv:2406.02657, Table 3 and the authors' repo
itsnamgyu/block-transformer `conf/trainer/block_main_b4_*.yaml`; for ahead-of-time compilation on TPU pods): sizes `b4_5`, `b4_19`, `b4_85`, `b4_300`, `b4_800`,
`b4_1.2b`, the block-length-4 models of Table 1 named by their NON-embedding size:

  size     block decoder        token decoder        LR     batch  Table 1 total (50K-token vocab)
  b4_5     3 x 256, 8 heads     3 x 256, 8 heads     1e-3   256    33M*
  b4_19    3 x 512, 8 heads     3 x 512, 8 heads     1e-3   256    77M*
  b4_85    6 x 768, 12 heads    6 x 768, 12 heads    6e-4   256    170M*
  b4_300   12 x 1024, 16 heads  12 x 1024, 16 heads  3e-4   256    420M
  b4_800   8 x 2048, 16 heads   8 x 2048, 16 heads   3e-4   512    1.0B
  b4_1.2b  12 x 2048, 16 heads  12 x 2048, 16 heads  2e-4   512    1.4B

From the paper/repo: L_B = 4, prefix decoding with 2 prefix vectors ("2 + 4"), context 2048, head_dim
32 / 64 / 128 for width <= 256 / <= 1536 / larger (`util/config.py`), AdamW (0.9, 0.95), weight decay
0.1, linear warm-up 3,000 steps (1,500 at batch 512) then cosine to 10 %, clip 1.0, 572,000 steps at
batch 256 (286,000 at 512, ~300B tokens), random first-block padding only for the * models.
Ours is byte-level (vocab 256, context 2048 bytes = 512 blocks) where the paper's vocabulary has ~50K
tokens, so embedding tables differ entirely; the sizes match the paper's NON-embedding counts, which
cover the block and token decoder layers (5M = 2 x 3 x 12 x 256^2 = 4.7M; 805M = 2 x 8 x 12 x 2048^2;
the prefix projection, 2 x D^2, is not in them). The paper's layers are GPT-NeoX (GELU MLP of 4 x D,
8 D^2 params, biases, LayerNorm); ours are RMSNorm + SwiGLU, so `mlp_dim` = 8/3 x D (rounded to a
multiple of 8) keeps the MLP at 8 D^2 params. Execution: bfloat16 compute, float32 master weights,
stacks of more than two layers scanned, full remat for stacks 1024 wide or more, Pallas attention,
pure-FSDP mesh (fsdp = all devices, data = tensor = 1).
"""

import ml_collections

from configs import common

# name: (block d, block layers, token d, token layers, head_dim, seq_len, batch, steps, lr)
SIZES = {
    "tiny": (64, 1, 32, 1, 16, 32, 4, 20, 1e-3),
    "small": (128, 3, 128, 3, 32, 256, 8, 300, 3e-3),
    # The paper's block/token split ablation (App. M) in miniature: a cheaper token decoder
    # (experiments/block_throughput/README.md).
    "small_tok64": (128, 3, 64, 3, 32, 256, 8, 300, 3e-3),
    "small_tok96": (128, 3, 96, 3, 32, 256, 8, 300, 3e-3),
}

# Paper scale (module docstring). name: (block d, block layers, token d, token layers, lr, batch,
# random first-block padding)
PAPER_SIZES = {
    "b4_5": (256, 3, 256, 3, 1e-3, 256, True),
    "b4_19": (512, 3, 512, 3, 1e-3, 256, True),
    "b4_85": (768, 6, 768, 6, 6e-4, 256, True),
    "b4_300": (1024, 12, 1024, 12, 3e-4, 256, False),
    "b4_800": (2048, 8, 2048, 8, 3e-4, 512, False),
    "b4_1.2b": (2048, 12, 2048, 12, 2e-4, 512, False),
}
# The paper's non-embedding parameter counts (Table 1 / Table 3 size column), rounded as printed; the
# unrounded count behind them is `paper_non_embedding` (12 L D^2 per decoder: 805M = 2 x 8 x 12 x 2048^2).
PAPER_NON_EMBEDDING = {"b4_5": 5e6, "b4_19": 19e6, "b4_85": 85e6, "b4_300": 302e6, "b4_800": 805e6, "b4_1.2b": 1.2e9}
PAPER_SEQ_LEN = 2048
PAPER_SEQUENCES = 572_000 * 256  # rows seen: 572k steps at batch 256 (~300B tokens of 2048)


def paper_head_dim(d_model: int) -> int:
  """The Block Transformer repo's rule (`util/config.py::preprocess_config`)."""
  return 32 if d_model <= 256 else 64 if d_model <= 1536 else 128


def layer_params(d_model: int, num_layers: int) -> int:
  """The paper's count of `num_layers` transformer layers: 12 D^2 weights each (4 D^2 attention, 8 D^2 MLP;
  GPT-NeoX's 13 D biases and LayerNorm params are below the printed precision)."""
  return num_layers * 12 * d_model * d_model


def paper_non_embedding(size: str) -> int:
  """Unrounded non-embedding count of a paper size: block decoder + token decoder layers."""
  bd, bl, td, tl, *_ = PAPER_SIZES[size]
  return layer_params(bd, bl) + layer_params(td, tl)


def paper_decoder_stack(d_model: int, num_layers: int) -> ml_collections.ConfigDict:
  head_dim = paper_head_dim(d_model)
  return common.pod_stack(d_model, num_layers, d_model // head_dim, head_dim=head_dim,
                     remat="full" if d_model >= 1024 else "none")


def paper_train(lr: float, batch: int) -> ml_collections.ConfigDict:
  """The paper's optimiser and schedule; steps and warm-up halve at batch 512 (same tokens)."""
  steps = PAPER_SEQUENCES // batch
  return common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=3_000 * 256 // batch, lr_end_fraction=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, param_dtype="float32", log_every=100,
      eval_every=10_000, checkpoint_every=10_000)


def stack(d_model: int, num_layers: int, head_dim: int) -> ml_collections.ConfigDict:
  """The CPU-sized stacks (MLP 4 x d, unscanned); paper sizes use `paper_decoder_stack`."""
  heads = d_model // head_dim
  return ml_collections.ConfigDict(dict(
      d_model=d_model, num_layers=num_layers, num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
      mlp_dim=4 * d_model, scan=False, remat="none"))


def byte_data(seq_len: int, batch: int, eval_rows: int, random_pad: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      corpus="english", cache_dir="", seq_len=seq_len, eval_batch_size=batch, eval_rows=eval_rows,
      random_pad_first_block=random_pad, block_len=4))


def paper_config(size: str, seed: int) -> ml_collections.ConfigDict:
  bd, bl, td, tl, lr, batch, random_pad = PAPER_SIZES[size]
  config = common.base_config("block_transformer", seed=seed)
  config.train = paper_train(lr, batch)
  config.mesh = common.pod_mesh()
  config.model = ml_collections.ConfigDict(dict(
      block_decoder=paper_decoder_stack(bd, bl), token_decoder=paper_decoder_stack(td, tl), block_len=4,
      prefix_len=2, decoding="prefix", vocab_size=256, vocab_pad_to_multiple=8, attention_impl="pallas",
      dtype="bfloat16"))
  config.data = byte_data(PAPER_SEQ_LEN, batch, 4 * batch, random_pad=random_pad)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=256, temperature=0.8, top_k=0, top_p=1.0))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  if arg.size in PAPER_SIZES:
    return paper_config(arg.size, arg.seed)
  bd, bl, td, tl, head_dim, seq_len, batch, steps, lr = common.size_row(
      {**SIZES, **PAPER_SIZES}, arg.size, "block_transformer")
  config = common.base_config("block_transformer", seed=arg.seed)
  config.train = common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20),
      log_every=max(1, steps // 20), eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 2))
  config.model = ml_collections.ConfigDict(dict(
      block_decoder=stack(bd, bl, head_dim), token_decoder=stack(td, tl, head_dim), block_len=4,
      prefix_len=2, decoding="prefix", vocab_size=256, vocab_pad_to_multiple=8, attention_impl="auto",
      dtype="float32"))
  config.data = byte_data(seq_len, batch, 8 if arg.size == "tiny" else 256, random_pad=True)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=64, temperature=0.8, top_k=0, top_p=1.0))
  return config
