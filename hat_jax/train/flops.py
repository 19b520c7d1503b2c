"""Analytic training FLOPs per step from the model config, and MFU against a per-device peak table.

Convention (MaxText / PaLM-appendix style, written down once here and tested in tests/test_flops.py):

  * Only matmul-like work counts: a [m, k] x [k, n] product is 2*m*k*n FLOPs. Norms, RoPE, softmax,
    activations, biases, embedding gathers (also the Block Transformer's lookup-concat embedder), the
    loss and the optimizer update are not counted (on the tiny test configs they are 4-14% of what XLA
    counts; at real widths a few %). One weighted sum that is not a dot is counted as matmul-like: the
    tfree HAT pool's softmax-weighted sum of byte values (2*S*D per row, a product and a segment sum).
  * Training = 3 x forward: the backward pass computes two matmuls (input and weight gradients) per
    forward matmul (also for VAR's word_embed, whose input is data so its input gradient is never
    computed: 1 x its forward too many, 0.1-0.3% of a VAR step). Rematerialisation (`StackConfig.remat`)
    is NOT counted, and scanning a stack (`StackConfig.scan`) changes nothing: this is model FLOPs
    (MFU), not hardware FLOPs (the trainer's XLA-counted `hfu` is the latter). Note that XLA's
    `cost_analysis()` counts a scanned stack's loop body once, not num_layers times (seen on CPU), so
    its count of a scanned program is far below this one.
  * Attention scores and the weighted sum cost 4 * num_heads * head_dim FLOPs per (query, key) pair.
    `attention="causal"` (the MFU convention) counts only unmasked pairs: query i of a causal stack sees
    min(i + 1, window) keys (window = None: i + 1, i.e. about half of S^2), a bidirectional stack S keys,
    a block-causal one (VAR) every key of its own and earlier blocks, a cross-attention all its keys.
    Segment (document) boundaries inside a packed row are ignored: the row counts as one sequence.
    `attention="xla"` counts what the plain-jnp "xla" attention path executes instead: the blocked path's
    key blocks for windowed stacks that mask by index (HAT tfree, decoder LMs with `mask_by_index`:
    `blocked=True`), dense S x S for every other self-attention (explicit positions run the dense
    reference path whatever the mask); it exists to cross-check this module against XLA's cost analysis.
  * Positions are the batch's array shapes (padding included: the device computes on it), so a HAT
    step costs the byte levels per byte slot and the backbone per word slot of the actual batch, and a
    paper HAT every word slot's max_word_bytes + 1 positions. Positions a model computes and then drops
    count too, as the device runs them (XLA does not prune them): the Block Transformer's token-decoder
    head over its prefix slots, the paper HAT encoder's last layer over the byte slots (only the [W]
    state is read), the vanilla LM's last position. Throughput (bytes/s, words/s) counts real units;
    see `Task.throughput_counts`.
  * Frozen preprocessing inside a loss is not the trained model and is NOT counted: VAR's
    `MultiScaleVQVAE.var_inputs` (codebook lookups, bicubic upsampling, phi convs, area downsampling of
    the frozen tokenizer; forward only, no gradient). XLA does count it.

Per row / per image forward, by family (a "stack" term is L layers x (positions x per-position matmuls
+ pairs x 4*H*hd); a stack layer per position: q/k/v/o 2*d*hd*(2*H + 2*KV), SwiGLU 6*d*mlp):

HAT tfree (task "hat"), per row of S bytes and W words, d = encoder/decoder width, D = backbone width:
  encoder stack over S | pool: kv_proj 2*S*d*2D, scores + weighted sum 4*S*D (segment softmax, linear),
  o_proj 2*W*D*D | backbone stack over W | decoder: per layer guide proj 2*S*D*d + block over S |
  lm head 2*S*d*256.
HAT paper (task "hat", variant "paper"), per row of W word slots, n = max_word_bytes + 1:
  encoder: W bidirectional stacks over n ([W] + bytes; the stack's window is not used) |
  pool: to_backbone 2*W*d_enc*D + to_decoder 2*W*D*d_dec | backbone stack over W (causal, its window) |
  decoder: W causal stacks over n ([p; bytes], no window) | lm head 2*W*n*d_dec*256.
Decoder LM (`hat_jax.models.decoder_lm`: tasks "bytes" and "vanilla_lm"), per row of S tokens:
  stack over S | head 2*S*d*V (V = vocab_size, 256 for bytes).
Block Transformer (task "block_transformer"), per row of S tokens, N = S / L_B blocks, N - 1 decoded
  blocks (block 0 is never a target), T = token_context (prefix_len + L_B - 1, or L_B), n_ctx context
  vectors per block (prefix_len for "prefix", L_B otherwise), D = block width, d = token width:
  block_decoder stack over N (embedder: a gather, 0) | context: (N-1) x 2*D*n_ctx*d |
  token_decoder: (N-1) x stack over T, plus for "cross_attention" per layer q/o 2*T*d*H*hd*2,
  k/v 2*n_ctx*d*KV*hd*2 and T*n_ctx pairs | head (N-1) x 2*T*d*V (all T positions: the model slices the
  last L_B logits after the head).
VAR (task "var"), per image of L = sum(pn^2) tokens over scales pn, D = width, C = z_channels (Cvae),
  V = codebook size: embed: word_embed 2*(L-1)*C*D | adaln: per layer AdaLin 2*D*6D + head AdaLin
  2*D*2D, once per image on the class embedding | blocks: stack over L with block-causal pairs
  sum_k pn_k^2 * (pn_1^2 + ... + pn_k^2) (qk-norm and the affine-free LayerNorm not counted) |
  head 2*L*D*V.
Raster AR (task "raster_ar"): a decoder LM over N tokens with the class token first (`transformer_lm_flops`).
Each task holds its own count (`Task.training_flops`, built from the formulas here); tasks without one
(vqvae, axial, custom tasks) raise ValueError from `training_flops` and give None from
`step_flops_or_none`.

MFU = analytic training FLOPs per step * steps/s / (devices * peak FLOP/s per device). The peak table is
`hat_jax.train.metrics.device_peak_flops` (dense bf16, vendor datasheets; TPUs from `hat_jax.topology`); devices without an entry
(CPU, unlisted GPUs) get MFU None, printed "n/a".

Scaling laws use the coarser Kaplan/Chinchilla count instead: `six_nd_flops` = 6 * sum over levels of
(non-embedding params x positions that level processed in the whole run), no attention term. Fits of
L(C) are in that convention (`hat_jax/sweep.py` records it as `flops`, and this module's exact
count for the whole run next to it as `flops_exact`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from hat_jax.models.layers import StackConfig
from hat_jax.train import metrics as metrics_lib

ATTENTION_CONVENTIONS = ("causal", "xla")
BYTE_VOCAB = 256  # hat_jax.data.splitter.VOCAB_SIZE; kept literal so this module imports nothing heavy
def _check_convention(attention: str) -> None:
  if attention not in ATTENTION_CONVENTIONS:
    raise ValueError(f"attention convention must be one of {ATTENTION_CONVENTIONS}, got {attention!r}.")


def attention_pairs(seq_len: int, *, causal: bool = True, window: int | None = None,
                    attention: str = "causal", blocked: bool = True) -> int:
  """(query, key) pairs one sequence of `seq_len` attends over, under the given convention.

  `blocked` (attention="xla" only): the attention call leaves positions as arange (`mask_by_index=True`
  stacks), so a windowed mask takes the blocked path; False: explicit positions, dense S x S always.
  """
  _check_convention(attention)
  s = int(seq_len)
  if attention == "xla":
    if window is not None and causal and blocked:
      # The blocked path (hat_jax.kernels.blocked_xla): each query block of B rows reads n key blocks.
      from hat_jax.kernels import blocked_xla  # pylint: disable=g-import-not-at-top
      from hat_jax.kernels.masks import MaskSpec  # pylint: disable=g-import-not-at-top
      block, n_blocks = blocked_xla.block_size(MaskSpec(causal=True, window=window))
      return -(-s // block) * block * n_blocks * block
    return s * s
  if not causal:
    return s * s
  w = s if window is None else min(int(window), s)
  # sum_{i<s} min(i + 1, w) = w(w+1)/2 + (s - w) * w
  return w * (w + 1) // 2 + (s - w) * w


def block_causal_pairs(block_sizes, *, attention: str = "causal") -> int:
  """Pairs of a block-causal mask over consecutive blocks of the given sizes (VAR: one block per scale,
  pn^2 tokens): a query sees every key of its own and all earlier blocks. "xla": dense, total^2."""
  _check_convention(attention)
  sizes = [int(n) for n in block_sizes]
  if attention == "xla":
    return sum(sizes) ** 2
  pairs, seen = 0, 0
  for n in sizes:
    seen += n
    pairs += n * seen
  return pairs


def layer_position_flops(stack: StackConfig) -> float:
  """Matmul FLOPs of one position through one layer, attention scores excluded."""
  d, hd = stack.d_model, stack.head_dim
  proj = 2 * d * hd * (2 * stack.num_heads + 2 * stack.num_kv_heads)  # q, o  +  k, v
  mlp = 6 * d * stack.mlp_dim  # gate, up, down
  return float(proj + mlp)


def layer_pair_flops(stack: StackConfig) -> float:
  """Attention FLOPs of one (query, key) pair in one layer: scores and weighted sum over all heads."""
  return float(4 * stack.num_heads * stack.head_dim)


def stack_forward_flops(stack: StackConfig, seq_len: int, *, causal: bool = True, attention: str = "causal",
                        blocked: bool = True) -> float:
  """Forward FLOPs of one sequence through a pre-norm GQA + SwiGLU stack (no embedding, no head), with
  the stack's own window (pass `without_window(stack)` for a model whose mask ignores it)."""
  pairs = attention_pairs(seq_len, causal=causal, window=stack.window, attention=attention, blocked=blocked)
  return float(stack.num_layers * (seq_len * layer_position_flops(stack) + pairs * layer_pair_flops(stack)))


def without_window(stack: StackConfig) -> StackConfig:
  """The stack as a model sees it when its mask is fixed (PaperHAT's per-word stacks, VAR's blocks)."""
  return dataclasses.replace(stack, window=None)


def cross_attention_flops(stack: StackConfig, q_len: int, kv_len: int) -> float:
  """Forward FLOPs of one cross-attention per layer of `stack` (q/o on q_len positions, k/v on kv_len
  source positions of width d_model, all q_len x kv_len pairs: it is unmasked in both conventions)."""
  d, hd = stack.d_model, stack.head_dim
  proj = 2 * q_len * d * hd * 2 * stack.num_heads + 2 * kv_len * d * hd * 2 * stack.num_kv_heads
  return float(stack.num_layers * (proj + q_len * kv_len * layer_pair_flops(stack)))


def transformer_lm_flops(stack: StackConfig, seq_len: int, batch: int, vocab: int, *, attention: str = "causal",
                         causal: bool = True, blocked: bool = True) -> dict[str, float]:
  """Generic decoder-only LM (embedding lookup, stack, vocab head) for any task: per-level forward FLOPs
  and `train` = 3 x forward, for `batch` sequences of `seq_len`."""
  fwd = {"stack": batch * stack_forward_flops(stack, seq_len, causal=causal, attention=attention, blocked=blocked),
         "head": batch * 2.0 * seq_len * stack.d_model * vocab}
  return _finish(fwd)


def hat_forward_flops(model_cfg: Mapping[str, Any], seq_bytes: int, seq_words: int, *,
                      max_word_bytes: int | None = None, attention: str = "causal") -> dict[str, float]:
  """Per-level forward FLOPs of ONE row (S bytes, W word slots) of a HAT (`config.model`)."""
  m = dict(model_cfg)
  enc, bb, dec = (StackConfig.from_config(m[k]) for k in ("encoder", "backbone", "decoder"))
  s, w, big_d = int(seq_bytes), int(seq_words), bb.d_model
  variant = m.get("variant", "tfree")
  if variant == "tfree":
    # Every stack masks by index (hat_jax.models.hat.HAT): windowed ones take the blocked "xla" path.
    return {
        "encoder": stack_forward_flops(enc, s, attention=attention),
        # kv_proj; latent-query scores and the weighted sum (a segment softmax over bytes: linear); o_proj
        "pool": 2.0 * s * enc.d_model * 2 * big_d + 4.0 * s * big_d + 2.0 * w * big_d * big_d,
        "backbone": stack_forward_flops(bb, w, attention=attention),
        "decoder": dec.num_layers * 2.0 * s * big_d * dec.d_model + stack_forward_flops(dec, s, attention=attention),
        "head": 2.0 * s * dec.d_model * BYTE_VOCAB,
    }
  if variant == "paper":
    if max_word_bytes is None:
      raise ValueError("The paper HAT runs per word over max_word_bytes + 1 slots; pass max_word_bytes "
                       "(config.data.max_word_bytes).")
    n = int(max_word_bytes) + 1  # [W] marker + bytes (encoder); previous-word vector + bytes (decoder)
    # hat_jax.models.hat.PaperHAT: the per-word stacks have fixed masks (bidirectional / causal, no
    # window); every stack gets explicit positions, so "xla" attention is dense (blocked=False).
    per_word = dict(attention=attention, blocked=False)
    return {
        "encoder": w * stack_forward_flops(without_window(enc), n, causal=False, **per_word),
        "pool": 2.0 * w * enc.d_model * big_d + 2.0 * w * big_d * dec.d_model,  # to_backbone, to_decoder
        "backbone": stack_forward_flops(bb, w, **per_word),
        "decoder": w * stack_forward_flops(without_window(dec), n, **per_word),
        "head": 2.0 * w * n * dec.d_model * BYTE_VOCAB,
    }
  if variant == "released":
    # hat_jax.models.hat.ReleasedWordPool / ReleasedCrossAttention: the pool's query is one projection of
    # the latent (per row, negligible); keys / values from the encoder width to kv_heads x head_dim; scores
    # and weighted sum over heads x head_dim; o_proj. The decoder's guide: v_proj and o_proj per byte in
    # the layers that cross-attend.
    pool_width = int(m["pool_heads"]) * enc.head_dim
    kv_width = (int(m.get("pool_kv_heads") or m["pool_heads"])) * enc.head_dim
    guide_width = int(m.get("guide_hidden") or dec.d_model)
    guide_kv = guide_width * int(m.get("guide_kv_heads") or m["guide_heads"]) // int(m["guide_heads"])
    cross_layers = dec.num_layers if m.get("guide_every_layer", True) else 1
    return {
        "encoder": stack_forward_flops(enc, s, attention=attention),
        "pool": 2.0 * s * enc.d_model * 2 * kv_width + 4.0 * s * pool_width + 2.0 * w * pool_width * big_d,
        "backbone": stack_forward_flops(bb, w, attention=attention),
        "decoder": (cross_layers * 2.0 * s * (big_d * guide_kv + guide_width * dec.d_model)
                    + stack_forward_flops(dec, s, attention=attention)),
        "head": 2.0 * s * dec.d_model * BYTE_VOCAB,
    }
  raise ValueError(f"No FLOP formula for HAT variant {variant!r}; known: 'tfree', 'paper', 'released'.")


def block_transformer_forward_flops(model_cfg: Mapping[str, Any], seq_len: int, *,
                                    attention: str = "causal") -> dict[str, float]:
  """Per-level forward FLOPs of ONE row of `seq_len` tokens of a Block Transformer (`config.model`)."""
  from hat_jax.models.block_transformer import BlockTransformerConfig  # pylint: disable=g-import-not-at-top
  cfg = BlockTransformerConfig.from_config(model_cfg)
  blk, tok, lb = cfg.block_decoder, cfg.token_decoder, cfg.block_len
  if seq_len % lb or seq_len < 2 * lb:
    raise ValueError(f"A Block Transformer row of {seq_len} tokens is not >= 2 whole blocks of {lb}.")
  n = seq_len // lb
  t = cfg.token_context
  n_ctx = cfg.prefix_len if cfg.decoding == "prefix" else lb
  # Both decoders get explicit positions (reference path: dense under "xla"); windows are rejected.
  token = stack_forward_flops(tok, t, attention=attention, blocked=False)
  if cfg.decoding == "cross_attention":
    token += cross_attention_flops(tok, t, n_ctx)
  return {
      "block_decoder": stack_forward_flops(blk, n, attention=attention, blocked=False),
      "context": (n - 1) * 2.0 * blk.d_model * n_ctx * tok.d_model,
      "token_decoder": (n - 1) * token,
      "head": (n - 1) * 2.0 * t * tok.d_model * cfg.vocab_size,
  }


def decoder_lm_forward_flops(model_cfg: Mapping[str, Any], seq_len: int, *, attention: str = "causal"
                             ) -> dict[str, float]:
  """Per-level forward FLOPs of ONE row of a decoder LM (`config.model` of tasks "bytes", "vanilla_lm")."""
  from hat_jax.models.decoder_lm import DecoderLMConfig  # pylint: disable=g-import-not-at-top
  cfg = DecoderLMConfig.from_config(model_cfg)
  out = transformer_lm_flops(cfg.decoder, seq_len, 1, cfg.vocab_size, attention=attention,
                             blocked=cfg.mask_by_index)
  return {k[len("forward/"):]: v for k, v in out.items() if k.startswith("forward/")}


def var_forward_flops(cfg, *, attention: str = "causal") -> dict[str, float]:
  """Per-level forward FLOPs of ONE image through VAR (`cfg` a VARConfig). The frozen tokenizer's
  `var_inputs` are not counted (module docstring)."""
  st, length = cfg.stack, cfg.seq_len
  d = st.d_model
  pairs = block_causal_pairs([pn * pn for pn in cfg.scales], attention=attention)
  return {
      "embed": 2.0 * (length - cfg.scales[0] ** 2) * cfg.z_channels * d,  # word_embed on the f_hat inputs
      "adaln": st.num_layers * 2.0 * d * 6 * d + 2.0 * d * 2 * d,  # per image: class embedding -> 6D / 2D
      "blocks": float(st.num_layers * (length * layer_position_flops(st) + pairs * layer_pair_flops(st))),
      "head": 2.0 * length * d * cfg.vocab_size,
  }


def per_step(row: Mapping[str, float], rows: int) -> dict[str, float]:
  """A row's per-level forward FLOPs x `rows` -> {"forward/<level>", "forward", "train" = 3 x forward}."""
  out = {f"forward/{k}": float(rows * v) for k, v in row.items()}
  out["forward"] = float(sum(out.values()))
  out["train"] = 3.0 * out["forward"]
  return out


def _finish(fwd: Mapping[str, float]) -> dict[str, float]:
  return per_step(fwd, 1)


def batch_shape(batch: Mapping[str, Any] | None, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of `batch[key]` (array or ShapeDtypeStruct), or `default` without a batch."""
  if batch is None:
    return tuple(int(d) for d in default)
  if key not in batch:
    raise ValueError(f"Counting FLOPs needs {key!r} in the batch; got keys {sorted(batch)}.")
  x = batch[key]
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def training_flops(config, batch: Mapping[str, Any] | None = None, *, attention: str = "causal"
                   ) -> dict[str, float]:
  """Analytic FLOPs of one training step of `config` on `batch`: its task's `Task.training_flops`.

  `batch` is the GLOBAL batch (arrays or ShapeDtypeStructs; only shapes are read); without it, shapes
  come from config.train.batch_size and the data config. Returns {"train": 3 x forward, "forward",
  "forward/<level>"}. A task without a formula, or a config its task cannot be built from, is a
  ValueError (so `step_flops_or_none` gives None).
  """
  _check_convention(attention)
  from hat_jax.train import registry  # pylint: disable=g-import-not-at-top  # tasks import this module

  try:
    task = registry.make_task(config)
  except (AttributeError, KeyError, TypeError) as e:
    raise ValueError(f"Cannot count FLOPs: task {config.get('task')!r} cannot be built from this config ({e!r}).") from e
  counts = task.training_flops(batch, attention=attention)
  if counts is None:
    raise ValueError(f"No analytic FLOP formula for task {config.task!r}: implement {type(task).__name__}."
                     "training_flops with the formulas of hat_jax.train.flops (transformer_lm_flops, "
                     "stack_forward_flops, ...).")
  return counts


def six_nd_flops(config, params: Mapping[str, int]) -> float:
  """Training FLOPs of the whole run as 6 * sum over levels of N_level * D_level (Kaplan's C = 6ND):
  the task's `Task.six_nd_flops` (`params`: non-embedding param counts, `hat_jax.sweep.count_params`).
  Attention-score FLOPs are left out, as in 6ND; `training_flops` has them."""
  from hat_jax.train import registry  # pylint: disable=g-import-not-at-top

  task = registry.make_task(config)
  out = task.six_nd_flops(params)
  if out is None:
    raise ValueError(f"6ND needs the positions each level of task {config.task!r} processes: implement "
                     f"{type(task).__name__}.six_nd_flops.")
  return out


def describe_peak(device_kind: str) -> str:
  """One line for logs: the peak used and its source, or why MFU is n/a."""
  peak = metrics_lib.device_peak_flops(device_kind)
  if peak is None:
    return f"MFU n/a: no peak FLOP/s entry for device kind {device_kind!r}"
  return f"MFU against {peak[0] / 1e12:.0f} TFLOP/s per device ({peak[1]})"


def step_flops_or_none(config, batch: Mapping[str, Any] | None = None) -> float | None:
  """Analytic training FLOPs per step for the trainer's logs, or None for tasks without a formula
  (their logs then carry the XLA-counted `hfu` only)."""
  try:
    return training_flops(config, batch)["train"]
  except ValueError:
    return None
