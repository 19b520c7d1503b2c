"""HAT on the default English corpus (Neitemeier et al. 2025; released TFree-HAT design).

  python -m hat_jax.data prepare english
  python -m hat_jax.main --config=configs/hat.py:tiny --workdir=runs/hat_tiny --mode=train_and_sample

Sizes: "test" (seconds; unit tests), "tiny" (the quickstart: a few minutes on 2 CPU cores), "small".
Arguments: `:tiny,variant=paper` selects the paper's design, `split_rule=whitespace` the paper's
whitespace splitter, `corpus=toy` a built-in corpus that needs no preparation, `corpus=tfds:wiki40b/en`
a prepared TFDS dataset (with `--config.data.tfds_data_dir=gs://...`), streamed.
"""

import ml_collections

from configs import common

# name: (enc/dec width, enc layers, dec layers, backbone width, backbone layers, head_dim, window,
#        seq_bytes, seq_words, batch, steps, lr)
SIZES = {
    "test": (32, 1, 1, 64, 1, 16, 16, 64, 24, 4, 4, 1e-3),
    "tiny": (128, 1, 1, 256, 3, 32, 64, 256, 80, 16, 360, 3e-3),
    "small": (192, 2, 2, 384, 6, 32, 128, 512, 160, 32, 4000, 2e-3),
}


def stack(d_model: int, num_layers: int, head_dim: int, window: int | None) -> ml_collections.ConfigDict:
  heads = d_model // head_dim
  return ml_collections.ConfigDict(dict(
      d_model=d_model, num_layers=num_layers, num_heads=heads, num_kv_heads=max(1, heads // 2),
      head_dim=head_dim, mlp_dim=int(8 / 3 * d_model) // 8 * 8, window=window, rope_theta=10_000.0,
      qk_norm=False, norm_eps=1e-6, scan=False, remat="none"))


def data_config(seq_bytes: int, seq_words: int, batch: int, corpus: str, split_rule: str,
                max_word_bytes: int = 24) -> ml_collections.ConfigDict:
  """`corpus`: "toy", a prepared corpus name, or "tfds:<name>" (streamed from `tfds_data_dir`, which may be
  gs://; `text_key` is the text feature; the tfds_*_split strings are TFDS split specs such as "train[:90%]").
  `toy_docs`: how many documents the built-in "toy" corpus draws per split (more for full rows of long
  sequences, e.g. a throughput run of a paper-scale config without prepared data).

  `bos`: frame each document as `[BOS] text [EOD]` (True, how this project trains) or `text [EOD]` (False:
  the released TFree-HAT models were trained without a BOS byte, their `_prepare_input` feeds the raw text).
  It sets the framing of training rows, prompts (samplers) and scored texts alike; `python -m hat_jax.convert
  from-hf` writes False, next to the released splitter's `special_tokens` (not set here: none by default)."""
  return ml_collections.ConfigDict(dict(
      corpus=corpus, cache_dir="", toy_docs=64, split_rule=split_rule, max_word_bytes=max_word_bytes, bos=True,
      seq_bytes=seq_bytes, seq_words=seq_words, eval_batch_size=batch, eval_batches=8,
      tfds_data_dir="", text_key="text", tfds_train_split="train", tfds_eval_split="validation"))


def sample_config(max_new_bytes: int = 200) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      prompt="It was a dark and stormy night; ", max_new_bytes=max_new_bytes, temperature=0.7, top_k=0,
      top_p=1.0, num_samples=2,
      engine="device"))  # HAT: "device" (hat_jax/generate/hat_engine.py) or "host" (the per-byte hat_sampler.py)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="tiny", seed=0, variant="tfree", split_rule="tfree", corpus="english")
  d, enc_layers, dec_layers, bd, b_layers, head_dim, window, seq_bytes, seq_words, batch, steps, lr = (
      common.size_row(SIZES, arg.size, "hat"))
  config = common.base_config("hat", seed=arg.seed)
  config.train = common.train_defaults(
      steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=max(1, steps // 20),
      log_every=max(1, steps // 30), eval_every=max(1, steps // 3), checkpoint_every=max(1, steps // 3))
  config.model = ml_collections.ConfigDict(dict(
      variant=arg.variant, encoder=stack(d, enc_layers, head_dim, window),
      backbone=stack(bd, b_layers, head_dim, None), decoder=stack(d, dec_layers, head_dim, window),
      pool_heads=4, attention_impl="auto", dtype="float32"))
  config.data = data_config(seq_bytes, seq_words, batch, arg.corpus, arg.split_rule)
  config.sample = sample_config(64 if arg.size == "test" else 300)
  return config
