"""Block Transformer over bytes (Ho et al. 2024). `:small` (default) or `:tiny`, e.g.

  python -m hat_jax.main --config=configs/block_transformer.py:tiny --workdir=/tmp/bt \
      --config.model.decoding=summation --config.model.block_len=8

"small" is the CPU-sized model of experiments/block_throughput: block decoder 128 wide x 3 layers,
token decoder 128 wide x 3 layers, L_B = 4, prefix 2 (D_emb = 128 / 4 = 32 per byte). Optimiser as the
paper (AdamW b=(0.9, 0.95), wd 0.1, warm-up + cosine to 10 %, clip 1.0) and random first-block padding.
Rows: block-aligned single-document windows of the corpus (hat_jax/train/block_tasks.py).
Input embedding tables have 264 rows (256 bytes + pad, `vocab_pad_to_multiple=8`) so that tensor-parallel
sizes up to 8 shard them; the extra rows are never used, and the first 257 initialise as a 257-row table's.
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


def stack(d_model: int, num_layers: int, head_dim: int) -> ml_collections.ConfigDict:
  heads = d_model // head_dim
  return ml_collections.ConfigDict(dict(
      d_model=d_model, num_layers=num_layers, num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
      mlp_dim=4 * d_model, scan=False, remat="none"))


def byte_data(seq_len: int, batch: int, eval_rows: int, random_pad: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      corpus="english", cache_dir="", seq_len=seq_len, eval_batch_size=batch, eval_rows=eval_rows,
      random_pad_first_block=random_pad, block_len=4))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  bd, bl, td, tl, head_dim, seq_len, batch, steps, lr = common.size_row(SIZES, arg.size, "block_transformer")
  config = common.base_config("block_transformer", seed=arg.seed)
  config.train = common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20),
      log_every=max(1, steps // 20), eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 2))
  config.model = ml_collections.ConfigDict(dict(
      block_decoder=stack(bd, bl, head_dim), token_decoder=stack(td, tl, head_dim), block_len=4,
      prefix_len=2, decoding="prefix", vocab_size=256, vocab_pad_to_multiple=8, attention_impl="xla",
      dtype="float32"))
  config.data = byte_data(seq_len, batch, 8 if arg.size == "tiny" else 256, random_pad=True)
  config.sample = ml_collections.ConfigDict(dict(prompt="The ", num_bytes=64, temperature=0.8, top_k=0, top_p=0.0))
  return config
