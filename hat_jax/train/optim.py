"""Optimizer from `config.train`: AdamW, linear warmup then cosine decay, global-norm clipping."""

from __future__ import annotations

import jax
from absl import logging
import jax.numpy as jnp
import optax

PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Warmup from 0 to `learning_rate` over `warmup_steps`, then cosine to `lr_end_fraction * lr` at `steps`."""
  lr = float(train_config.learning_rate)
  steps, warmup = int(train_config.steps), int(train_config.warmup_steps)
  if warmup < 0:
    raise ValueError(f"config.train.warmup_steps must be >= 0, got {warmup}.")
  if warmup > steps:
    # Common after `--config.train.steps=<small>` on a config tuned for a longer run: warm up over the
    # whole (short) run rather than refuse to start.
    logging.warning("config.train.warmup_steps=%d > steps=%d; warming up over all %d steps.", warmup, steps, steps)
    warmup = steps
  return optax.warmup_cosine_decay_schedule(
      # decay_steps counts the warmup too; optax needs a non-empty cosine part.
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
      end_value=lr * float(train_config.lr_end_fraction))


def _decay_mask(params):
  """Weight decay on matrices only: norms' scales and biases (rank <= 1) are not decayed."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  tx = optax.adamw(
      learning_rate_schedule(train_config), b1=float(train_config.b1), b2=float(train_config.b2),
      eps=float(train_config.eps), weight_decay=float(train_config.weight_decay), mask=_decay_mask)
  if train_config.grad_clip and float(train_config.grad_clip) > 0:
    tx = optax.chain(optax.clip_by_global_norm(float(train_config.grad_clip)), tx)
  return tx


def param_dtype(train_config):
  name = str(train_config.param_dtype)
  if name not in PARAM_DTYPES:
    raise ValueError(f"config.train.param_dtype must be one of {sorted(PARAM_DTYPES)}, got {name!r}.")
  return PARAM_DTYPES[name]


def cast_params(params, dtype):
  """Cast floating-point leaves (keeping flax partitioning boxes) to the storage dtype."""
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, params)
