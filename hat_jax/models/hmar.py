"""HMAR: Markovian next-scale prediction with masked steps within each scale (Kumbong et al., CVPR 2025,
arXiv 2506.04421), over the multi-scale VQ tokens of `hat_jax.models.vqvae` and VAR's blocks.

  p(r_1, ..., r_K) = prod_k p(r_k | x~_{<k})      x~_{<k}: the tokenizer's running sum f_hat of scales < k

HMAR is VAR (`hat_jax.models.var`: class embedding as start token and AdaLN condition, AdaLN blocks, the
same tokenizer inputs and head) with three things added, and nothing else:

  mask      Markovian: scale k attends only to its own positions, whose inputs already hold x~_{<k}
            (area-downsampled to scale k) -- block-diagonal over scales, `markov_mask(scales)` =
            MaskSpec(causal=True, window=1, blocks=(pn_1^2, ..., pn_K^2)). The block layout is static, so
            every attention implementation (blocked XLA path, our Pallas kernel, "auto") skips the tiles
            outside it: attention costs sum_k pn_k^4 pairs instead of VAR's sum_k pn_k^2 (pn_1^2 + ... + pn_k^2).
  tokens    every position also gets code_embed(Z[r_k[i]]) when that token is revealed (Z: the tokenizer's
            frozen codebook, projected like VAR's word_embed projects the f_hat inputs) and a learned MASK
            vector when it is masked (token id V). All masked is VAR-style one-shot next-scale prediction.
            This adds Cvae x D + 2 D parameters to VAR's (1,152 for configs/hmar.py:small: matched sizes).
  loss      MaskGIT within each scale (`random_mask`, `masked_loss`): per image and scale a mask ratio
            cos(pi/2 u), u ~ U(0, 1) (all masked with probability `full_mask_prob`, standing in for the
            paper's next-scale pretraining stage); cross-entropy on the masked tokens, weighted n_k / m_k
            so that its expectation is the mean over all L positions, VAR's weighting.

Sampling (`hat_jax.generate.images.generate_hmar`) runs each scale in S_k masked steps, a per-scale schedule
given at sampling time (`check_schedule`; no retraining): MaskGIT's cosine schedule says how many tokens
stay masked after each step (`masked_after`), and the most confident draws are kept. With the
block-diagonal mask a scale never reads earlier scales' keys, so sampling holds no KV cache across scales:
`HMAR.step` runs one scale's pn_k^2 positions alone and equals the full pass at that scale (tested).
Zero-shot inpainting: given tokens start revealed at every scale and only the rest are drawn.

Paper vs here: the paper states the Markovian mask as block-diagonal over scales (attention restricted
to the tokens of x~_{1:k-1} interpolated to scale k), which is `window=1`; `window=2` (a scale also sees its
predecessor's positions) is also a static layout the kernels skip for (tested), but it is not used for
the model: those positions hold the predecessor's partially masked tokens in training and its final
tokens at sampling. The paper trains in two stages (next-scale, then masked-prediction fine-tuning with
a separate head); here one stage and one head (`full_mask_prob` mixes the two objectives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.kernels import MaskSpec
from hat_jax.models.layers import dense_init, empty_caches, small_normal
from hat_jax.models.var import VAR, VARConfig


def scale_lengths(scales: Sequence[int]) -> tuple[int, ...]:
  return tuple(int(pn) * int(pn) for pn in scales)


def markov_mask(scales: Sequence[int], window: int = 1) -> MaskSpec:
  """The Markovian scale mask as a static block layout: window=1 block-diagonal (HMAR: a scale sees its
  own positions), window=2 a scale and its immediate predecessor."""
  return MaskSpec(causal=True, window=window, blocks=scale_lengths(scales))


def attention_pairs(scales: Sequence[int], window: int | None) -> int:
  """(query, key) pairs of a scale mask: window None = VAR's block-causal, w = the Markovian mask over the
  current and w - 1 previous scales (1: block-diagonal)."""
  n = scale_lengths(scales)
  lo = (lambda k: 0) if window is None else (lambda k: max(0, k - window + 1))
  return sum(n[k] * sum(n[lo(k):k + 1]) for k in range(len(n)))


class HMAR(VAR):
  """VAR with the Markovian block-diagonal mask and a revealed-token / MASK embedding at every position.

  __call__(labels [B], x_in [B, L - 1, Cvae], token_in [B, L], codebook [V, Cvae]) -> logits [B, L, V]
  step(labels [B], x_k [B, pn_k^2, Cvae] | None, k, token_k [B, pn_k^2], codebook) -> logits [B, pn_k^2, V]
  token_in / token_k hold r_k[i] where revealed and `mask_id` (= V) where masked; codebook is the
  tokenizer's (`vq.apply(vq_params, method=images.tokenizer_codebook)`), an input like x_in, not a parameter.
  """

  def setup(self):
    super().setup()
    d = self.cfg.stack.d_model
    self.code_embed = nn.Dense(d, kernel_init=nn.with_logical_partitioning(dense_init(), (None, "embed")),
                               bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
    self.mask_embed = self.param("mask_embed", small_normal(d, (None, "embed")), (1, d))

  def scale_mask(self) -> tuple[MaskSpec, bool]:
    # Positions omitted in the full pass: the kernels then see the static block layout and skip tiles.
    return markov_mask(self.cfg.scales), True

  @property
  def mask_id(self) -> int:
    return self.cfg.vocab_size

  def token_inputs(self, token_in, codebook, length: int):
    """token ids [B, T] (mask_id = MASK) -> [B, T, D]: code_embed(codebook[id]) or the MASK vector."""
    cfg = self.cfg
    if token_in.ndim != 2 or token_in.shape[1] != length:
      raise ValueError(f"HMAR token inputs must be [batch, {length}] (revealed token ids, {self.mask_id} = MASK), "
                       f"got shape {token_in.shape}.")
    if codebook.shape != (cfg.vocab_size, cfg.z_channels):
      raise ValueError(f"HMAR needs the tokenizer's codebook [{cfg.vocab_size}, {cfg.z_channels}], got "
                       f"{codebook.shape}.")
    masked = (token_in == self.mask_id)[..., None]
    codes = jnp.take(codebook, jnp.where(masked[..., 0], 0, token_in), axis=0)  # [B, T, Cvae]
    return jnp.where(masked, self.mask_embed, self.code_embed(codes))

  def __call__(self, labels, x_in, token_in, codebook):
    cfg = self.cfg
    extra = self.token_inputs(token_in, codebook, cfg.seq_len)
    return self._run(labels, x_in, 0, len(cfg.scales), None, extra)[0]

  def step(self, labels, x_k, k: int, token_k, codebook):
    """Scale k alone: one masked step of the sampler. Attention is dense over the scale's own pn_k^2 keys
    (the whole live block of the block-diagonal mask), run through the stack's cache path with a cache
    of exactly those keys, which is dropped afterwards: nothing is kept across scales."""
    n = self.cfg.scales[k] ** 2
    extra = self.token_inputs(token_k, codebook, n)
    caches = empty_caches(self.cfg.stack, token_k.shape[0], n, self.cfg.jnp_dtype)
    return self._run(labels, x_k, k, 1, caches, extra)[0]


# ---------------------------------------------------------------------------------------------------
# Masked steps: the schedule


def parse_schedule(steps) -> int | tuple[int, ...]:
  """A schedule from a config value: an int (every scale), a sequence of ints, or a string "1,1,2,4"."""
  if isinstance(steps, str):
    parts = [p.strip() for p in steps.strip("()[] ").split(",") if p.strip()]
    try:
      values = tuple(int(p) for p in parts)
    except ValueError:
      raise ValueError(f"HMAR sampling schedule {steps!r} is not a comma-separated list of ints; give the number "
                       f"of masked steps per scale, e.g. '1,1,2,2,3,4', or one int for every scale.") from None
    return values[0] if len(values) == 1 else values
  if isinstance(steps, (list, tuple)):
    return tuple(steps)
  return steps


def check_schedule(steps, scales: Sequence[int]) -> tuple[int, ...]:
  """-> the number of masked steps of every scale, validated. `steps`: one int for all scales, one int per
  scale, or such a string. Each scale needs 1 <= steps <= pn^2 (every step reveals at least one token)."""
  scales = tuple(scales)
  how = (f"give one int per scale (the number of masked steps that scale is generated in), e.g. "
         f"{tuple(min(pn * pn, 1 + k // 2) for k, pn in enumerate(scales))}, or one int for every scale")
  steps = parse_schedule(steps)
  if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
    steps = (int(steps),) * len(scales)
  if not isinstance(steps, tuple):
    raise ValueError(f"HMAR sampling schedule must be an int or a sequence of ints, got {steps!r}: {how}.")
  if len(steps) != len(scales):
    raise ValueError(f"HMAR sampling schedule {steps} has {len(steps)} entries but the tokenizer has "
                     f"{len(scales)} scales {scales}: {how}.")
  out = []
  for k, (s, pn) in enumerate(zip(steps, scales)):
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
      raise ValueError(f"HMAR sampling schedule {steps}: entry {k} ({s!r}) is not an int: {how}.")
    if not 1 <= s <= pn * pn:
      raise ValueError(f"HMAR sampling schedule {steps}: scale {k} ({pn}x{pn} = {pn * pn} tokens) cannot be "
                       f"generated in {s} steps; each step reveals at least one token, so its entry must be in "
                       f"[1, {pn * pn}].")
    out.append(int(s))
  return tuple(out)


def masked_after(unknown, steps: int, xp=np):
  """MaskGIT's cosine schedule: how many of `unknown` tokens stay masked after each of `steps` steps,
  [..., steps] (the last is 0). After step s, floor(u cos(pi/2 (s+1)/steps)), at least one fewer than
  before and, while enough remain, at least one per later step. Works on ints (np) and arrays (jnp)."""
  unknown = xp.asarray(unknown)
  remaining, out = unknown, []
  for s in range(steps):
    later = steps - 1 - s
    target = xp.floor(unknown * math.cos(math.pi / 2 * (s + 1) / steps)).astype(unknown.dtype)
    target = xp.maximum(xp.minimum(xp.maximum(target, later), remaining - 1), 0)
    if later == 0:
      target = xp.zeros_like(target)
    out.append(target)
    remaining = target
  return xp.stack(out, axis=-1)


def reveal_counts(n: int, steps: int) -> tuple[int, ...]:
  """Tokens revealed at each step for a scale of n tokens (each >= 1, summing to n)."""
  after = [int(x) for x in masked_after(np.int64(n), steps)]
  return tuple(b - a for b, a in zip([n] + after[:-1], after))


# ---------------------------------------------------------------------------------------------------
# Training: random masks and the masked loss


def random_mask(rng: jax.Array, cfg: VARConfig, batch: int, full_mask_prob: float = 0.2) -> jax.Array:
  """[B, L] bool, True = masked: per image and scale, m = clip(ceil(cos(pi/2 u) n), 1, n) random tokens of
  the scale's n are masked, u ~ U(0, 1); with probability `full_mask_prob` all n."""
  k_ratio, k_full, k_order = jax.random.split(rng, 3)
  n = jnp.asarray(scale_lengths(cfg.scales), jnp.float32)  # [K]
  ratio = jnp.cos(jnp.pi / 2 * jax.random.uniform(k_ratio, (batch, len(cfg.scales))))
  ratio = jnp.where(jax.random.bernoulli(k_full, full_mask_prob, ratio.shape), 1.0, ratio)
  m = jnp.clip(jnp.ceil(ratio * n), 1, n)  # [B, K]
  return ranks_within_scales(k_order, cfg, batch) < m[:, cfg.scale_ids]


def ranks_within_scales(rng: jax.Array, cfg: VARConfig, batch: int) -> jax.Array:
  """[B, L] int32: a uniformly random order of each scale's positions (0 .. n_k - 1 within scale k)."""
  ids = cfg.scale_ids  # [L]
  keys = ids[None].astype(jnp.float32) + jax.random.uniform(rng, (batch, cfg.seq_len), maxval=0.999)
  rank = jnp.argsort(jnp.argsort(keys, axis=1), axis=1)  # scales stay in order: rank in [start_k, stop_k)
  starts = jnp.asarray(np.cumsum((0,) + scale_lengths(cfg.scales))[:-1], jnp.int32)
  return (rank - starts[ids][None]).astype(jnp.int32)


def masked_loss(logits: jax.Array, tokens: jax.Array, masked: jax.Array, cfg: VARConfig):
  """Cross-entropy on masked tokens, each weighted n_k / m_k (its scale's tokens over masked ones), summed
  and divided by L: in expectation over the masks, the mean over all positions (VAR's loss weighting)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]  # [B, L]
  ids = cfg.scale_ids
  onehot = jax.nn.one_hot(ids, len(cfg.scales), dtype=jnp.float32)  # [L, K]
  m = masked.astype(jnp.float32) @ onehot  # [B, K] masked per scale
  weight = jnp.asarray(scale_lengths(cfg.scales), jnp.float32) / jnp.maximum(m, 1.0)
  w = jnp.where(masked, weight[:, ids], 0.0)
  loss = jnp.mean(jnp.sum(w * nll, axis=1)) / cfg.seq_len
  correct = jnp.argmax(logits, axis=-1) == tokens
  count = jnp.maximum(jnp.sum(masked), 1)
  return loss, {"masked_nll": jnp.sum(jnp.where(masked, nll, 0.0)) / count,
                "masked_accuracy": jnp.sum(masked & correct) / count,
                "mask_fraction": jnp.mean(masked.astype(jnp.float32))}


def schedule_step_bounds(cfg: VARConfig, schedule: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """For the random-order NLL: [S_max, L] int arrays (lo, hi): at step s the tokens of rank in [lo, hi)
  within their scale are predicted, those of rank < lo are revealed (empty range once a scale is done)."""
  s_max = max(schedule)
  lo = np.zeros((s_max, cfg.seq_len), np.int32)
  hi = np.zeros((s_max, cfg.seq_len), np.int32)
  for k, (n, steps) in enumerate(zip(scale_lengths(cfg.scales), schedule)):
    sl = cfg.scale_slice(k)
    done = np.cumsum((0,) + reveal_counts(n, steps))
    for s in range(s_max):
      lo[s, sl] = done[min(s, steps)]
      hi[s, sl] = done[min(s + 1, steps)]
  return lo, hi
