"""Analytic training FLOPs per step from the model config, and MFU against a per-device peak table.

Convention (MaxText / PaLM-appendix style, written down once here and tested in tests/test_flops.py):

  * Only matmul-like work counts: a [m, k] x [k, n] product is 2*m*k*n FLOPs. Norms, RoPE, softmax,
    activations, embedding gathers, the loss and the optimizer update are not counted (on the tiny test
    configs they are ~10-30% of what XLA counts; at real widths they are a few %).
  * Training = 3 x forward: the backward pass computes two matmuls (input and weight gradients) per
    forward matmul. Rematerialisation is NOT counted: this is model FLOPs (MFU), not hardware FLOPs
    (the trainer's XLA-counted `hfu` is the latter).
  * Attention scores and the weighted sum cost 4 * num_heads * head_dim FLOPs per (query, key) pair.
    `attention="causal"` (the MFU convention) counts only unmasked pairs: query i of a causal stack sees
    min(i + 1, window) keys (window = None: i + 1, i.e. about half of S^2), a bidirectional stack S keys.
    Segment (document) boundaries inside a packed row are ignored: the row counts as one sequence.
    `attention="xla"` counts what the plain-jnp "xla" attention path executes instead (dense S x S for
    full-causal stacks, the blocked window path's key blocks for windowed ones, the pool's dense
    byte x word membership); it exists to cross-check this module against XLA's cost analysis.
  * Positions are the batch's array shapes (padding included: the device computes on it), so a HAT
    step costs the byte levels per byte slot and the backbone per word slot of the actual batch.
    Throughput (bytes/s, words/s) counts real units; see `Task.throughput_counts`.

HAT (tfree) forward per row of S bytes and W words, d = encoder/decoder width, D = backbone width:
  encoder stack over S | pool: kv_proj 2*S*d*2D, scores + weighted sum 4*S*D, o_proj 2*W*D*D |
  backbone stack over W | decoder: per layer guide proj 2*S*D*d + block over S | lm head 2*S*d*256.
A stack layer per position: q/k/v/o 2*d*hd*(2*H + 2*KV), SwiGLU 6*d*mlp, plus attention as above.

MFU = analytic training FLOPs per step * steps/s / (devices * peak FLOP/s per device). The peak table is
`hat_jax.train.metrics.PEAK_BF16_FLOPS` (dense bf16, vendor datasheets); devices without an entry
(CPU, unlisted GPUs) get MFU None, printed "n/a".

Scaling laws use the coarser Kaplan/Chinchilla count instead: `six_nd_flops` = 6 * sum over levels of
(non-embedding params x positions that level processed in the whole run), no attention term. Fits of
L(C) are in that convention (`experiments/sweep.py` records it as `flops`, and this module's exact
count for the whole run next to it as `flops_exact`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hat_jax.models.layers import StackConfig as Stack  # the one stack-shape type
from hat_jax.train import metrics as metrics_lib

ATTENTION_CONVENTIONS = ("causal", "xla")
BYTE_VOCAB = 256  # hat_jax.data.splitter.VOCAB_SIZE; kept literal so this module imports nothing heavy


def attention_pairs(seq_len: int, *, causal: bool = True, window: int | None = None,
                    attention: str = "causal") -> int:
  """(query, key) pairs one sequence of `seq_len` attends over, under the given convention."""
  if attention not in ATTENTION_CONVENTIONS:
    raise ValueError(f"attention convention must be one of {ATTENTION_CONVENTIONS}, got {attention!r}.")
  s = int(seq_len)
  if attention == "xla":
    if window is not None:
      # The blocked path (hat_jax.kernels.blocked_xla): each query block of B rows reads n key blocks.
      from hat_jax.kernels import blocked_xla  # pylint: disable=g-import-not-at-top
      from hat_jax.kernels.masks import MaskSpec  # pylint: disable=g-import-not-at-top
      block, n_blocks = blocked_xla._block_size(MaskSpec(causal=True, window=window))  # pylint: disable=protected-access
      return -(-s // block) * block * n_blocks * block
    return s * s
  if not causal:
    return s * s
  w = s if window is None else min(int(window), s)
  # sum_{i<s} min(i + 1, w) = w(w+1)/2 + (s - w) * w
  return w * (w + 1) // 2 + (s - w) * w


def layer_position_flops(stack: Stack) -> float:
  """Matmul FLOPs of one position through one layer, attention scores excluded."""
  d, hd = stack.d_model, stack.head_dim
  proj = 2 * d * hd * (2 * stack.num_heads + 2 * stack.num_kv_heads)  # q, o  +  k, v
  mlp = 6 * d * stack.mlp_dim  # gate, up, down
  return float(proj + mlp)


def layer_pair_flops(stack: Stack) -> float:
  """Attention FLOPs of one (query, key) pair in one layer: scores and weighted sum over all heads."""
  return float(4 * stack.num_heads * stack.head_dim)


def stack_forward_flops(stack: Stack, seq_len: int, *, causal: bool = True, attention: str = "causal") -> float:
  """Forward FLOPs of one sequence through a pre-norm GQA + SwiGLU stack (no embedding, no head)."""
  pairs = attention_pairs(seq_len, causal=causal, window=stack.window, attention=attention)
  return float(stack.num_layers * (seq_len * layer_position_flops(stack) + pairs * layer_pair_flops(stack)))


def transformer_lm_flops(stack: Stack, seq_len: int, batch: int, vocab: int, *, attention: str = "causal",
                         causal: bool = True) -> dict[str, float]:
  """Generic decoder-only LM (embedding lookup, stack, vocab head) for any task: per-level forward FLOPs
  and `train` = 3 x forward, for `batch` sequences of `seq_len`."""
  fwd = {"stack": batch * stack_forward_flops(stack, seq_len, causal=causal, attention=attention),
         "head": batch * 2.0 * seq_len * stack.d_model * vocab}
  return _finish(fwd)


def hat_forward_flops(model_cfg: Mapping[str, Any], seq_bytes: int, seq_words: int, *,
                      max_word_bytes: int | None = None, attention: str = "causal") -> dict[str, float]:
  """Per-level forward FLOPs of ONE row (S bytes, W word slots) of a HAT (`config.model`)."""
  m = dict(model_cfg)
  enc, bb, dec = (Stack.from_config(m[k]) for k in ("encoder", "backbone", "decoder"))
  s, w, big_d = int(seq_bytes), int(seq_words), bb.d_model
  variant = m.get("variant", "tfree")
  if variant == "tfree":
    pool_mix = 2.0 * s * big_d * (w if attention == "xla" else 1)  # weighted sum; dense membership on XLA
    return {
        "encoder": stack_forward_flops(enc, s, attention=attention),
        "pool": 2.0 * s * enc.d_model * 2 * big_d + 2.0 * s * big_d + pool_mix + 2.0 * w * big_d * big_d,
        "backbone": stack_forward_flops(bb, w, attention=attention),
        "decoder": dec.num_layers * 2.0 * s * big_d * dec.d_model + stack_forward_flops(dec, s, attention=attention),
        "head": 2.0 * s * dec.d_model * BYTE_VOCAB,
    }
  if variant == "paper":
    if max_word_bytes is None:
      raise ValueError("The paper HAT runs per word over max_word_bytes + 1 slots; pass max_word_bytes "
                       "(config.data.max_word_bytes).")
    n = int(max_word_bytes) + 1  # [W] marker + bytes (encoder); previous-word vector + bytes (decoder)
    return {
        "encoder": w * stack_forward_flops(enc, n, causal=False, attention=attention),
        "pool": 2.0 * w * enc.d_model * big_d + 2.0 * w * big_d * dec.d_model,  # to_backbone, to_decoder
        "backbone": stack_forward_flops(bb, w, attention=attention),
        "decoder": w * stack_forward_flops(dec, n, attention=attention),
        "head": 2.0 * w * n * dec.d_model * BYTE_VOCAB,
    }
  raise ValueError(f"No FLOP formula for HAT variant {variant!r}; known: 'tfree', 'paper'.")


def _finish(fwd: Mapping[str, float]) -> dict[str, float]:
  out = {f"forward/{k}": float(v) for k, v in fwd.items()}
  out["forward"] = float(sum(fwd.values()))
  out["train"] = 3.0 * out["forward"]
  return out


def _shape(batch: Mapping[str, Any], key: str) -> tuple[int, ...]:
  x = batch[key]
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def training_flops(config, batch: Mapping[str, Any] | None = None, *, attention: str = "causal"
                   ) -> dict[str, float]:
  """Analytic FLOPs of one training step of `config` (tasks "hat" and "bytes") on `batch`.

  `batch` is the GLOBAL batch (arrays or ShapeDtypeStructs; only shapes are read: "bytes" [B, S] and,
  for HAT, "word_lengths" [B, W]). Without it, shapes come from config.train.batch_size and
  config.data.seq_bytes / seq_words. Returns {"train": 3 x forward, "forward", "forward/<level>"}.
  """
  task = str(config.task)
  if task not in ("hat", "bytes"):
    raise ValueError(f"No analytic FLOP formula for task {task!r} (known: 'hat', 'bytes'); use "
                     f"transformer_lm_flops / stack_forward_flops in hat_jax.train.flops for a new task.")
  if batch is not None:
    b, s = _shape(batch, "bytes")[:2]
    w = _shape(batch, "word_lengths")[1] if "word_lengths" in batch else int(config.data.get("seq_words", 0))
  else:
    b, s = int(config.train.batch_size), int(config.data.seq_bytes)
    w = int(config.data.get("seq_words", 0))
  if task == "hat":
    row = hat_forward_flops(config.model, s, w, max_word_bytes=config.data.get("max_word_bytes"),
                            attention=attention)
    return _finish({k: b * v for k, v in row.items()})
  return transformer_lm_flops(Stack.from_config(config.model.stack), s, b, BYTE_VOCAB, attention=attention)


def training_positions(config) -> dict[str, float]:
  """Positions a whole training run computes on, padding included (compute is spent on it):
  "bytes" = steps x batch x seq_bytes and, for HAT, "words" = steps x batch x seq_words."""
  t, d = config.train, config.data
  if "seq_bytes" not in d:
    raise ValueError(f"6ND counts byte positions, but task {config.task!r} has no config.data.seq_bytes; "
                     f"add its positions to hat_jax.train.flops.training_positions.")
  rows = int(t.steps) * int(t.batch_size)
  out = {"bytes": float(rows * int(d.seq_bytes))}
  if config.task == "hat":
    out["words"] = float(rows * int(d.seq_words))
  return out


def six_nd_flops(config, params: Mapping[str, int]) -> float:
  """Training FLOPs of the whole run as 6 * sum over levels of N_level * D_level (Kaplan's C = 6ND).

  `params` are non-embedding param counts (`experiments.sweep.count_params`): for HAT
  "params_byte_level" (encoder, pooling, guides, decoder, head: run per byte) and "params_backbone"
  (run per word); for other tasks "params_non_embedding", run per byte. Attention-score FLOPs are
  left out, as in 6ND; `training_flops` has them.
  """
  pos = training_positions(config)
  if config.task == "hat":
    return 6.0 * (params["params_byte_level"] * pos["bytes"] + params["params_backbone"] * pos["words"])
  return 6.0 * params["params_non_embedding"] * pos["bytes"]


def mfu(train_flops_per_step: float, steps_per_sec: float, num_devices: int, device_kind: str) -> float | None:
  """Model FLOPs utilisation in [0, 1], or None when the device has no peak entry (CPU: "n/a")."""
  peak = metrics_lib.device_peak_flops(device_kind)
  if peak is None or num_devices < 1 or not math.isfinite(steps_per_sec):
    return None
  return train_flops_per_step * steps_per_sec / (num_devices * peak[0])


def describe_peak(device_kind: str) -> str:
  """One line for logs: the peak used and its source, or why MFU is n/a."""
  peak = metrics_lib.device_peak_flops(device_kind)
  if peak is None:
    return f"MFU n/a: no peak FLOP/s entry for device kind {device_kind!r}"
  return f"MFU against {peak[0] / 1e12:.0f} TFLOP/s per device ({peak[1]})"


def format_mfu(value: float | None) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def step_flops_or_none(config, batch: Mapping[str, Any] | None = None) -> float | None:
  """Analytic training FLOPs per step for the trainer's logs, or None for tasks without a formula
  (their logs then carry the XLA-counted `hfu` only)."""
  try:
    return training_flops(config, batch)["train"]
  except ValueError:
    return None
