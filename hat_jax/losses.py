"""Losses and their metrics for every model family, built on one per-token NLL.

Every loss here is a mean of `token_nll` (natural-log cross-entropy from a float32 log-softmax) over
some mask; "bits" are nats / LN2. Families differ only in what they average over and report:

  next_byte_metrics     HAT (tfree) and the byte baseline: packed rows, loss_mask, word accuracy
  paper_hat_metrics     HAT (paper design): per-word predictions ending in [W], bits per UTF-8 byte
  masked_token_metrics  Block Transformer and the vanilla baseline: the same target bytes for both
  image_token_metrics   VAR and raster AR over VQ tokens: bits per image and per pixel dimension
  bits_per_dim          Axial Transformer over pixels
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)

Metrics = dict[str, jax.Array]


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-position negative log-likelihood in nats: logits [..., V], targets [...] -> [...].

  Targets are clipped into the vocabulary first: masked-out positions may hold a pad id one past it
  (the Block Transformer's pad row), and their (finite, unused) value must not index out of range.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = jnp.clip(targets.astype(jnp.int32), 0, logits.shape[-1] - 1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x over mask (0 when the mask is empty); masked entries never reach the sum, so a
  non-finite value there stays out."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(mask > 0, x, 0.0) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[...] bool: the argmax is the target."""
  return jnp.argmax(logits, -1) == targets


def word_accuracy(correct: jax.Array, valid: jax.Array, target_word: jax.Array, word_lengths: jax.Array) -> jax.Array:
  """Fraction of words whose every byte was predicted correctly (Neitemeier et al., Eq. 15-16).

  correct, valid: [batch, n] per prediction; target_word: [batch, n] index of the word the predicted
  byte belongs to; word_lengths: [batch, W]. Only words all of whose bytes were predicted count.
  """
  num_words = word_lengths.shape[1]

  def per_row(c, v, tw):
    predicted = jax.ops.segment_sum(v.astype(jnp.int32), tw, num_segments=num_words)
    wrong = jax.ops.segment_sum((v & ~c).astype(jnp.int32), tw, num_segments=num_words)
    return predicted, wrong

  predicted, wrong = jax.vmap(per_row)(correct, valid, target_word)
  counted = (predicted == word_lengths) & (word_lengths > 0)
  return jnp.sum(counted & (wrong == 0)) / jnp.maximum(jnp.sum(counted), 1)


def next_byte_metrics(logits: jax.Array, batch: dict) -> tuple[jax.Array, Metrics]:
  """Next-byte cross-entropy on a packed batch (`hat_jax.data.pipeline` rows). logits [B, S, 256]."""
  mask = batch["loss_mask"]
  loss = masked_mean(token_nll(logits, batch["targets"]), mask)
  correct = accuracy(logits, batch["targets"])
  target_word = jnp.concatenate([batch["word_ids"][:, 1:], jnp.zeros_like(batch["word_ids"][:, :1])], axis=1)
  return loss, {
      "loss": loss,
      "bits_per_byte": loss / LN2,
      "byte_accuracy": masked_mean(correct.astype(jnp.float32), mask),
      "word_accuracy": word_accuracy(correct, mask > 0, target_word, batch["word_lengths"]),
  }


def paper_hat_metrics(logits: jax.Array, targets: jax.Array, mask: jax.Array, is_byte: jax.Array
                      ) -> tuple[jax.Array, Metrics]:
  """The paper design's loss: logits [B, W, M+1, V] for `c_1..c_M, [W]` of each word, mask [B, W, M+1]
  of the predictions that count, is_byte [B, W, M+1] marking byte (not [W]) targets. The loss averages
  every prediction; bits are per UTF-8 byte: the [W] predictions cost bits too, but are normalised by
  bytes (paper L1603)."""
  nll = token_nll(logits, targets)
  mask_f = mask.astype(jnp.float32)
  byte_mask = mask & is_byte
  num_bytes = jnp.maximum(jnp.sum(byte_mask), 1.0)
  loss = masked_mean(nll, mask_f)
  correct = accuracy(logits, targets)
  word_ok = jnp.all(correct | ~byte_mask, axis=-1)
  words = jnp.any(byte_mask, axis=-1)
  return loss, {
      "loss": loss,
      "bits_per_byte": jnp.sum(nll * mask_f) / num_bytes / LN2,
      "byte_accuracy": jnp.sum(correct * byte_mask) / num_bytes,
      "word_accuracy": jnp.sum(word_ok & words) / jnp.maximum(jnp.sum(words), 1),
  }


def masked_token_metrics(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metrics]:
  """Mean cross-entropy (nats) over mask; bits per byte and the number of target bytes (summed in eval)."""
  loss = masked_mean(token_nll(logits, targets), mask)
  return loss, {"loss": loss, "bits_per_byte": loss / LN2, "target_bytes": jnp.sum(mask.astype(jnp.float32))}


def image_token_metrics(logits: jax.Array, tokens: jax.Array, pixels_per_image: int, tail: slice
                        ) -> tuple[jax.Array, Metrics]:
  """Mean token NLL (the loss, equal weight per position) plus bits per image and per pixel dimension,
  accuracy, and the loss on the `tail` positions (the finest scale / last rows)."""
  nll = token_nll(logits, tokens)  # [B, L]
  bits_per_image = jnp.mean(jnp.sum(nll, axis=1)) / LN2
  return jnp.mean(nll), {
      "accuracy": jnp.mean(accuracy(logits, tokens)),
      "tail_loss": jnp.mean(nll[:, tail]),
      "bits_per_image": bits_per_image,
      "bits_per_dim": bits_per_image / pixels_per_image,
  }


def bits_per_dim(logits: jax.Array, pixels: jax.Array) -> jax.Array:
  """Mean NLL in bits per pixel dimension; logits [B, H, W, levels], pixels [B, H, W]."""
  return jnp.mean(token_nll(logits, pixels)) / LN2
