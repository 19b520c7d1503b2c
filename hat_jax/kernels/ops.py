"""One entry point for attention, dispatched on `impl` (the models' `attention_impl` config field)."""

from __future__ import annotations

import jax

from hat_jax.kernels import auto
from hat_jax.kernels.block_attention import block_attention
from hat_jax.kernels.blocked_xla import blocked_attention, blocked_supported
from hat_jax.kernels.masks import MaskSpec
from hat_jax.kernels.reference import reference_attention
from hat_jax.kernels.sharded import kernel_platform, shard_map_kernel

# "xla": plain jnp lowered by XLA: blocked (linear in length) for window/chunk masks with default
# positions, dense masked attention otherwise. "pallas": the Pallas block-sparse flash kernel for the
# platform being compiled for (TPU Mosaic or GPU, `sharded.kernel_platform`), interpret mode on CPU, run per
# device under `jax.shard_map` when a mesh is in context. "auto": per backend and mask the fastest of
# these, cuDNN (GPU) and splash attention (TPU) that computes exactly our mask (`hat_jax.kernels.auto`).
ATTENTION_IMPLS = ("auto", "xla", "pallas")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec = MaskSpec(),
    *,
    impl: str = "xla",
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    site: str = "attention",
) -> jax.Array:
  """Masked multi-head (GQA) attention; see `hat_jax.kernels.masks` for the mask semantics.

  Pass positions=None when they are arange: only then can the "xla" path use blocks and the Pallas
  kernel bound its grid statically (explicit arrays stay correct but cost like a dense mask). `site`
  names the call site in the record of what "auto" chose (`auto.choices()`).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}.")
  segments = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  if impl == "auto":
    choice = auto.choose(kernel_platform(), spec, q_len=q.shape[1], kv_len=k.shape[1], head_dim=q.shape[-1],
                         dtype=q.dtype, explicit_positions=q_positions is not None or kv_positions is not None,
                         segments=q_segment_ids is not None, same_segments=q_segment_ids is kv_segment_ids)
    auto.record(site, choice)
    impl = choice.impl
  if impl in ("cudnn", "splash"):
    vendor = auto.cudnn_attention if impl == "cudnn" else auto.splash_attention
    return shard_map_kernel(lambda q, k, v, qs, ks: vendor(q, k, v, spec, qs, ks), q, k, v, (q_segment_ids,),
                            (kv_segment_ids,))
  if impl == "pallas":
    # A Pallas call is a custom call XLA cannot partition: on a mesh it runs per device (shard_map).
    def kernel(q, k, v, q_positions, q_segment_ids, kv_positions, kv_segment_ids):
      return block_attention(q, k, v, spec, q_positions=q_positions, kv_positions=kv_positions,
                             q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    return shard_map_kernel(kernel, q, k, v, (q_positions, q_segment_ids), (kv_positions, kv_segment_ids))
  if blocked_supported(spec, q, k, q_positions, kv_positions):
    return blocked_attention(q, k, v, spec, **segments)
  return reference_attention(q, k, v, spec, q_positions=q_positions, kv_positions=kv_positions, **segments)
