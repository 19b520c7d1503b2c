"""Axial attention (Axial Transformer): attention along one spatial axis of [batch, H, W, heads, d].

axis=1 attends along H (column attention: each column is an independent sequence), axis=2 along W
(row attention). `causal=True` is the masked variant (a pixel sees itself and earlier pixels on the axis).
Implementation: the attended axis becomes the sequence axis and the other spatial axis folds into the
batch, then any 1-D implementation of `hat_jax.kernels.attention` runs. Row attention is a free reshape;
column attention costs one transpose in HBM each way (the Pallas kernels do not yet index the 5-D
tensor in place, see docs/kernels.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hat_jax.kernels.masks import MaskSpec

AXIAL_IMPLS = ("xla", "pallas", "reference")


def _check(x_q, k, v, axis):
  if x_q.ndim != 5 or k.ndim != 5 or v.ndim != 5:
    raise ValueError(
        "axial attention expects q [batch, H, W, heads, head_dim] and k/v [batch, H, W, kv_heads, head_dim];"
        f" got q{x_q.shape} k{k.shape} v{v.shape}.")
  if x_q.shape[:3] != k.shape[:3] or k.shape != v.shape or x_q.shape[4] != k.shape[4]:
    raise ValueError(f"q, k, v disagree on batch/H/W/head_dim: q{x_q.shape} k{k.shape} v{v.shape}.")
  if x_q.shape[3] % k.shape[3]:
    raise ValueError(f"heads ({x_q.shape[3]}) must be a multiple of kv_heads ({k.shape[3]}).")
  axis = axis + 5 if axis < 0 else axis
  if axis not in (1, 2):
    raise ValueError(f"axis must be 1 (along H, columns) or 2 (along W, rows) of [batch, H, W, heads, d], "
                     f"got {axis}.")
  return axis


def axial_reference(x_q: jax.Array, k: jax.Array, v: jax.Array, axis: int, causal: bool) -> jax.Array:
  """Dense einsum oracle on the 5-D tensors directly (no folding), float32 softmax."""
  axis = _check(x_q, k, v, axis)
  qa, ka, va = (jnp.moveaxis(x, axis, 2) for x in (x_q, k, v))  # [b, other, L, heads, d]
  b, o, length, h, d = qa.shape
  hk = ka.shape[3]
  qa = qa.reshape(b, o, length, hk, h // hk, d)
  logits = jnp.einsum("bolhgd,bomhd->bohglm", qa, ka, preferred_element_type=jnp.float32) * d**-0.5
  if causal:
    keep = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    logits = jnp.where(keep, logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bohglm,bomhd->bolhgd", probs.astype(va.dtype), va, preferred_element_type=jnp.float32)
  return jnp.moveaxis(out.reshape(b, o, length, h, d), 2, axis).astype(x_q.dtype)


def axial_attention(x_q: jax.Array, k: jax.Array, v: jax.Array, axis: int, causal: bool = False,
                    impl: str = "xla") -> jax.Array:
  """Attention along `axis` (1 = H, 2 = W) of [batch, H, W, heads, d]; returns x_q's shape and dtype."""
  from hat_jax.kernels.ops import attention  # local import: ops imports the kernels, not vice versa

  axis = _check(x_q, k, v, axis)
  if impl not in AXIAL_IMPLS:
    raise ValueError(f"axial impl must be one of {AXIAL_IMPLS}, got {impl!r}.")
  if impl == "reference":
    return axial_reference(x_q, k, v, axis, causal)
  qa, ka, va = (jnp.moveaxis(x, axis, 2) for x in (x_q, k, v))
  b, o, length = qa.shape[:3]
  fold = lambda x: x.reshape(b * o, length, *x.shape[3:])  # noqa: E731
  out = attention(fold(qa), fold(ka), fold(va), MaskSpec(causal=causal), impl=impl)
  return jnp.moveaxis(out.reshape(qa.shape), 2, axis)
