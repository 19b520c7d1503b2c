"""One entry point for attention, dispatched on `impl` (the models' `attention_impl` config field)."""

from __future__ import annotations

import jax

from hat_jax.kernels.masks import MaskSpec
from hat_jax.kernels.reference import reference_attention

# "xla": plain jnp lowered by XLA (dense masked attention); "pallas": the Pallas block-sparse kernel for
# the current backend (TPU Mosaic or GPU), interpret mode on CPU.
ATTENTION_IMPLS = ("xla", "pallas")


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
) -> jax.Array:
  """Masked multi-head (GQA) attention; see `hat_jax.kernels.masks` for the mask semantics."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}.")
  if impl == "pallas":
    raise NotImplementedError("attention_impl='pallas' is not available yet; use 'xla'.")
  return reference_attention(
      q, k, v, spec, q_positions=q_positions, kv_positions=kv_positions,
      q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
