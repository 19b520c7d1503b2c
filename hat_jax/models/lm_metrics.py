"""Byte-LM losses and metrics shared by HAT and the byte baseline: bits per byte and word accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LN2 = 0.6931471805599453


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


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


def next_byte_metrics(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
  """Next-byte cross-entropy on a packed batch. logits: [batch, seq_bytes, 256]."""
  mask = batch["loss_mask"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
  loss = masked_mean(ce, mask)
  correct = jnp.argmax(logits, -1) == batch["targets"]
  target_word = jnp.concatenate([batch["word_ids"][:, 1:], jnp.zeros_like(batch["word_ids"][:, :1])], axis=1)
  metrics = {
      "loss": loss,
      "bits_per_byte": loss / LN2,
      "byte_accuracy": masked_mean(correct.astype(jnp.float32), mask),
      "word_accuracy": word_accuracy(correct, mask > 0, target_word, batch["word_lengths"]),
  }
  return loss, metrics
