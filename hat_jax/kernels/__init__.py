"""Attention kernels: masks as data, a plain-jnp reference, and implementations selected by name."""

from hat_jax.kernels.axial import AXIAL_IMPLS, axial_attention, axial_reference
from hat_jax.kernels.block_attention import block_attention
from hat_jax.kernels.masks import MaskSpec, dense_mask
from hat_jax.kernels.ops import ATTENTION_IMPLS, attention
from hat_jax.kernels.reference import cache_attention, reference_attention

__all__ = [
    "ATTENTION_IMPLS", "AXIAL_IMPLS", "MaskSpec", "attention", "axial_attention", "axial_reference",
    "block_attention", "cache_attention", "dense_mask", "reference_attention",
]
