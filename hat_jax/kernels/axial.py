"""Axial attention (Axial Transformer): attention along one spatial axis of [batch, H, W, heads, d].

axis=1 attends along H (column attention: each column is an independent sequence), axis=2 along W
(row attention). `causal=True` is the masked variant (a pixel sees itself and earlier pixels on the axis).

Implementations (`impl`):
  "reference"  dense einsum on the 5-D tensors, the oracle.
  "xla"        the attended axis becomes the sequence axis, the other spatial axis folds into batch,
               then `hat_jax.kernels.attention(impl="xla")`. Column attention transposes in HBM.
  "pallas"     GPU (and CPU interpret): `axial_pallas`, one kernel for both axes that reads each line
               of the 5-D tensor in place through its BlockSpec (a strided block, no HBM transpose).
               TPU: Mosaic blocks need their last two dims (sublane, lane) aligned, which a strided
               line of a [.., W, heads, d] array is not, so it folds like "xla" and runs the block kernel.
  "auto"       folds like "xla", then `attention(impl="auto")`: cuDNN / splash where they have the mask.
An axis is short (an image side), so one program holds a whole line: a single [L, L] tile per head,
plain (not online) softmax, and the backward pass recomputes the probabilities.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from hat_jax.kernels.block_attention import dot_f32, gpu_compiler_params
from hat_jax.kernels.masks import MaskSpec
from hat_jax.kernels.sharded import kernel_platform, shard_map_kernel

AXIAL_IMPLS = ("auto", "xla", "pallas", "reference")


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


# ------------------------------------------------------------------------------ in-place Pallas kernel


def _probs(q, k, causal, scale):
  """q, k [L, d] -> softmax probabilities [L, L] in float32 (every row has >= 1 live key)."""
  s = dot_f32(q, k, 1, 1) * scale
  if causal:
    rows = lax.broadcasted_iota(jnp.int32, s.shape, 0)
    cols = lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(cols <= rows, s, -1e30)
  p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  return p / jnp.sum(p, axis=-1, keepdims=True)


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, *, causal, scale, groups):
  # q/o refs: one line of the `groups` query heads sharing this kv head, [L, groups, d]; k/v: [L, d].
  k, v = k_ref[...], v_ref[...]
  for g in range(groups):
    p = _probs(q_ref[:, g, :], k, causal, scale)
    o_ref[:, g, :] = dot_f32(p.astype(v.dtype), v).astype(o_ref.dtype)


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, causal, scale, groups):
  k, v = k_ref[...], v_ref[...]
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for g in range(groups):
    q, do = q_ref[:, g, :], do_ref[:, g, :]
    p = _probs(q, k, causal, scale)
    dp = dot_f32(do, v, 1, 1)
    ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))  # softmax VJP; rowsum(p*dp) = rowsum(o*do)
    dq_ref[:, g, :] = (dot_f32(ds.astype(k.dtype), k) * scale).astype(dq_ref.dtype)
    dk += dot_f32(ds.astype(q.dtype).T, q) * scale
    dv += dot_f32(p.astype(do.dtype).T, do)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _line_specs(shape, axis, groups, kv):
  """BlockSpecs reading one whole line along `axis` for one kv head (q: its group of query heads).

  Grid = (batch, index along the other spatial axis, kv head). The block squeezes the other spatial
  axis, so the line is a strided view of the 5-D array: no transpose ever materialises.
  """
  _, h_size, w_size, _, d = shape
  heads = 1 if kv else groups
  head_dim = None if kv else heads
  if axis == 2:
    return pl.BlockSpec((None, None, w_size, head_dim, d), lambda b, o, hk: (b, o, 0, hk, 0))
  return pl.BlockSpec((None, h_size, None, head_dim, d), lambda b, o, hk: (b, 0, o, hk, 0))


def _axial_call(kernel, q, k, axis, n_out_q, n_out_kv, interpret):
  b, h_size, w_size, h, _ = q.shape
  hk = k.shape[3]
  groups = h // hk
  q_spec, kv_spec = _line_specs(q.shape, axis, groups, False), _line_specs(k.shape, axis, groups, True)
  other = h_size if axis == 2 else w_size
  outs = ([jax.ShapeDtypeStruct(q.shape, q.dtype)] * n_out_q
          + [jax.ShapeDtypeStruct(k.shape, k.dtype)] * n_out_kv)
  n_in_q = 1 if n_out_kv == 0 else 2  # fwd: q, k, v;  bwd: q, k, v, do
  in_specs = [q_spec, kv_spec, kv_spec] + [q_spec] * (n_in_q - 1)
  return pl.pallas_call(
      functools.partial(kernel, groups=groups), grid=(b, other, hk), in_specs=in_specs,
      out_specs=[q_spec] * n_out_q + [kv_spec] * n_out_kv, out_shape=outs,
      compiler_params=gpu_compiler_params(), interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _axial_pallas(q, k, v, axis, causal, interpret):
  scale = q.shape[-1]**-0.5
  kernel = functools.partial(_fwd_kernel, causal=causal, scale=scale)
  return _axial_call(kernel, q, k, axis, 1, 0, interpret)(q, k, v)[0]


def _axial_fwd(q, k, v, axis, causal, interpret):
  return _axial_pallas(q, k, v, axis, causal, interpret), (q, k, v)


def _axial_bwd(axis, causal, interpret, res, do):
  q, k, v = res
  kernel = functools.partial(_bwd_kernel, causal=causal, scale=q.shape[-1]**-0.5)
  dq, dk, dv = _axial_call(kernel, q, k, axis, 1, 2, interpret)(q, k, v, do)
  return dq, dk, dv


_axial_pallas.defvjp(_axial_fwd, _axial_bwd)


def axial_pallas(x_q, k, v, axis: int, causal: bool = False, interpret: bool | None = None):
  """In-place Pallas axial attention (GPU schedule; `interpret` defaults to True on CPU)."""
  axis = _check(x_q, k, v, axis)
  if interpret is None:
    interpret = kernel_platform() == "cpu"
  return _axial_pallas(x_q, k, v, axis, bool(causal), bool(interpret))


# ------------------------------------------------------------------------------------- entry point


def _in_place_ok(x_q, k, axis) -> bool:
  """Whether the in-place kernel applies: CPU interpret always; GPU (Triton) needs power-of-two tiles."""
  platform = kernel_platform()
  if platform == "cpu":
    return True
  if platform != "gpu":
    return False  # TPU: see the module docstring
  pow2 = lambda n: n & (n - 1) == 0  # noqa: E731
  return all(pow2(n) for n in (x_q.shape[axis], x_q.shape[3] // k.shape[3], x_q.shape[4]))


def axial_attention(x_q: jax.Array, k: jax.Array, v: jax.Array, axis: int, causal: bool = False,
                    impl: str = "xla") -> jax.Array:
  """Attention along `axis` (1 = H, 2 = W) of [batch, H, W, heads, d]; returns x_q's shape and dtype."""
  from hat_jax.kernels.ops import attention  # local import: ops imports the kernels, not vice versa

  axis = _check(x_q, k, v, axis)
  if impl not in AXIAL_IMPLS:
    raise ValueError(f"axial impl must be one of {AXIAL_IMPLS}, got {impl!r}.")
  if impl == "reference":
    return axial_reference(x_q, k, v, axis, causal)
  if impl == "pallas" and _in_place_ok(x_q, k, axis):
    # Per device on a mesh (shard_map over batch and heads): XLA cannot partition a Pallas call.
    return shard_map_kernel(lambda q_, k_, v_: axial_pallas(q_, k_, v_, axis, causal), x_q, k, v)
  qa, ka, va = (jnp.moveaxis(x, axis, 2) for x in (x_q, k, v))
  b, o, length = qa.shape[:3]
  fold = lambda x: x.reshape(b * o, length, *x.shape[3:])  # noqa: E731
  out = attention(fold(qa), fold(ka), fold(va), MaskSpec(causal=causal), impl=impl)
  return jnp.moveaxis(out.reshape(qa.shape), 2, axis)
