"""VAR (next-scale prediction) over the frozen multi-scale VQ tokens of configs/vqvae.py. `:small` or `:tiny`.

  python -m hat_jax.main --config=configs/vqvae.py:small --workdir=runs/vqvae_small --mode=train_and_sample
  python -m hat_jax.main --config=configs/var.py:small --workdir=runs/var_small --mode=train_and_sample

AdaLN transformer, block-causal over the 6 scales (130 positions), class embedding as start token and
AdaLN condition, 10% label dropout for CFG; sampling ramps CFG linearly to `sample.cfg_scale`.
The tokenizer is the latest checkpoint of the VQVAE run in `config.tokenizer.workdir` (default
runs/vqvae_<size>: `:tiny` reads the run of configs/vqvae.py:tiny; another run:
`--config.tokenizer.workdir=...`, with the same tokenizer model).

Paper scale (Tian et al. 2024, arXiv:2404.02905, and the FoundationVision/VAR README and training
arguments), over configs/vqvae.py:var256 (VAR's 256 px tokenizer:
V = 4096, Cvae = 32, scales (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) = 680 tokens); for ahead-of-time compiling:

  size  depth  width (64 d)  heads (d, of 64)  params (README / paper)  batch  epochs  lr = tblr x bs / 256
  d16   16     1024          16                310M                     768    200     1e-4 x 3 = 3.0e-4
  d20   20     1280          20                600M                     768    250     1e-4 x 3 = 3.0e-4
  d24   24     1536          24                1.0B                     768    350     8e-5 x 3 = 2.4e-4
  d30   30     1920          30                2.0B                     1024   350     8e-5 x 4 = 3.2e-4

Blocks: AdaLN (6 D^2 + 6 D), attention 4 D^2 with QK normalisation, MLP. VAR's MLP is GELU with ratio 4
(8 D^2); ours is SwiGLU, so `mlp_dim` = 8/3 x D (1024 -> 2728, 1280 -> 3416, 1536 -> 4096,
1920 -> 5120) gives the same 8 D^2. VAR's counts include class/position/level embeddings and the head
and exclude the VQVAE, as ours (tests/test_paper_configs.py). Differences that change counts a little:
this project's image tasks have 10 classes (class table 11 x D, VAR's 1001 x D: -1.0M at d16, -2.0M at
d30), no q/v attention biases, and RMSNorm QK normalisation instead of VAR's L2 norm with a learned
per-head scale. Training from the paper/README: AdamW (0.9, 0.95), weight decay 0.05, clip 2.0, epochs
of 1,281,167 ImageNet images (steps = epochs x ceil(1,281,167 / batch)), warm-up epochs / 50, label
dropout 0.1; VAR's schedule is linear decay to `wpe` x peak (0.1 for d16/d20, 0.01 for d24/d30), here a
cosine to the same end fraction, and its weight decay is annealed (here constant). Sampling: VAR's FID
protocol (cfg 1.5, top-k 900, top-p 0.96). No ImageNet loader exists here: the data block names the
"synthetic" source at 256 px (compile-only; see configs/vqvae.py). bfloat16 compute, float32 master
weights, scanned blocks with full remat, Pallas attention, pure-FSDP mesh.
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

# Paper scale (module docstring). name: (depth, batch, epochs, tblr, end lr fraction `wpe`)
PAPER_SIZES = {
    "d16": (16, 768, 200, 1e-4, 0.1),
    "d20": (20, 768, 250, 1e-4, 0.1),
    "d24": (24, 768, 350, 8e-5, 0.01),
    "d30": (30, 1024, 350, 8e-5, 0.01),
}
PAPER_PARAMS = {"d16": 310e6, "d20": 600e6, "d24": 1.0e9, "d30": 2.0e9}  # README / Table 1 (#params)
# The same counts unrounded: every parameter of VAR's code at these depths (var_scaling.md §A.3,
# "counted from code", which reproduces the README column and the paper's 18.5M at d6).
PAPER_PARAMS_EXACT = {"d16": 310.3e6, "d20": 600.9e6, "d24": 1033.4e6, "d30": 2010.0e6}
IMAGENET_TRAIN = 1_281_167
PAPER_TOKENIZER = "var256"


def paper_config(size: str, seed: int) -> ml_collections.ConfigDict:
  depth, batch, epochs, tblr, end_fraction = PAPER_SIZES[size]
  steps_per_epoch = -(-IMAGENET_TRAIN // batch)
  config = common.base_config("var", seed=seed)
  config.train = common.train_defaults(
      steps=epochs * steps_per_epoch, batch_size=batch, learning_rate=tblr * batch / 256,
      warmup_steps=epochs * steps_per_epoch // 50, lr_end_fraction=end_fraction, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05, grad_clip=2.0, param_dtype="float32", log_every=100, eval_every=steps_per_epoch,
      checkpoint_every=steps_per_epoch)
  config.mesh = common.pod_mesh()
  config.model = ml_collections.ConfigDict(dict(
      stack=common.pod_stack(64 * depth, depth, depth, head_dim=64, qk_norm=True), attention_impl="pallas",
      cond_drop=0.1, dtype="bfloat16"))
  config.tokenizer = tokenizer(PAPER_TOKENIZER)
  config.data = image_data("synthetic", batch, config.tokenizer.model.image_size)
  config.sample = sample_block(f"runs/var_{size}", cfg_scale=1.5)
  config.sample.top_k, config.sample.top_p = 900, 0.96
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", seed=0)
  if arg.size in PAPER_SIZES:
    return paper_config(arg.size, arg.seed)
  d, layers, head_dim, batch, steps, lr = common.size_row({**SIZES, **PAPER_SIZES}, arg.size, "var")
  config = common.base_config("var", seed=arg.seed)
  config.train = train_block(steps, batch, lr)
  model_stack = stack(d, layers, head_dim)
  model_stack.qk_norm = True
  config.model = ml_collections.ConfigDict(dict(stack=model_stack, attention_impl="auto", cond_drop=0.1,
                                                dtype="float32"))
  config.tokenizer = tokenizer(arg.size)
  config.data = image_data("synthetic" if arg.size == "tiny" else "mnist", batch)
  config.sample = sample_block(f"runs/var_{arg.size}", cfg_scale=2.0)
  return config
