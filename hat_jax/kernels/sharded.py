"""Pallas kernels on a device mesh: which platform a program is compiled for, and `jax.shard_map`.

A `pallas_call` lowers to a custom call (Mosaic on TPU, Triton on GPU) that XLA's SPMD partitioner
cannot split: on a multi-device mesh it fails with "Mosaic kernels cannot be automatically partitioned.
Please wrap the call in a shard_map." So every kernel call runs inside `jax.shard_map` over the mesh
axes that the logical axis rules in context (`hat_jax.sharding`) give the batch and head dimensions:
each device runs the kernel on its own rows and heads, exactly as on one device. Attention never
mixes rows or heads, so no collective is needed.

Rules for each dimension (q [batch, ..., heads, head_dim], k/v [batch, ..., kv_heads, head_dim]):
  batch     sharded over the "batch" rule's mesh axes (the longest prefix of them that divides the
            batch; small sampling batches fall back to replication).
  heads     sharded over the "heads" rule's axes when they divide the head count.
  kv_heads  sharded like the query heads when the "kv_heads" rule names the same axes and divides the
            kv-head count; otherwise k/v stay whole on the head axis and each device slices out the kv
            heads its query heads use (GQA groups), so any tensor-parallel size works.
  length    never sharded: attention needs whole sequences per device. A rule that maps "length" to a
            mesh axis of size > 1 is an error that says so (sequence parallelism is not implemented).
  head_dim  never sharded.

The kernels also need to know their target: `kernel_platform()` is the platform of the mesh in
context (a TPU topology's devices when compiling ahead of time for a pod from a CPU host), else
jax's default backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import partitioning
from jax.sharding import PartitionSpec

Q_NAMES = ("batch", "length", "heads", "head_dim")
KV_NAMES = ("batch", "length", "kv_heads", "head_dim")


def context_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh set by `jax.set_mesh` (as `hat_jax.sharding.use_mesh` does), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def kernel_platform() -> str:
  """"tpu", "gpu" or "cpu": the platform of the mesh in context, else jax's default backend.

  Ahead-of-time compilation for a TPU topology runs on a CPU host whose default backend is "cpu"; the
  mesh in context is made of the topology's TPU devices, and that is what the kernels must target.
  """
  mesh = context_mesh()
  device = None if mesh is None else getattr(mesh, "abstract_device", None)
  platform = jax.default_backend() if device is None else device.platform
  return "gpu" if platform in ("cuda", "rocm") else platform


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def _size(mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _dividing_prefix(mesh, axes: tuple[str, ...], n: int) -> tuple[str, ...]:
  """The longest prefix of `axes` whose mesh size divides n."""
  while axes and n % _size(mesh, axes):
    axes = axes[:-1]
  return axes


def _spec_entry(axes: tuple[str, ...]):
  return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _local_kv_heads(x: jax.Array, shard: jax.Array, local_heads: int, groups: int) -> jax.Array:
  """The kv heads that query heads [shard * local_heads, (shard + 1) * local_heads) read (head axis -2)."""
  axis = x.ndim - 2
  if local_heads % groups == 0:  # whole GQA groups per shard
    n = local_heads // groups
    return jax.lax.dynamic_slice_in_dim(x, shard * n, n, axis)
  if groups % local_heads == 0:  # a shard inside one group: one kv head
    return jax.lax.dynamic_slice_in_dim(x, (shard * local_heads) // groups, 1, axis)
  # Shards straddle group edges: expand to one kv head per query head, then slice.
  return jax.lax.dynamic_slice_in_dim(jnp.repeat(x, groups, axis=axis), shard * local_heads, local_heads, axis)


def shard_map_kernel(
    fn: Callable[..., jax.Array],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_side: Sequence[jax.Array | None] = (),
    kv_side: Sequence[jax.Array | None] = (),
) -> jax.Array:
  """`fn(q, k, v, *q_side, *kv_side)` run per device under `jax.shard_map` when a multi-device mesh is
  in context, else called directly. Returns q's shape.

  q [batch, ..., heads, head_dim]; k, v [batch, ..., kv_heads, head_dim]; q_side / kv_side: per-token
  int arrays [batch, q_len] / [batch, kv_len] (positions, segment ids) or None.
  """
  mesh = context_mesh()
  if mesh is None or mesh.size == 1:
    return fn(q, k, v, *q_side, *kv_side)
  rules = partitioning.get_axis_rules()
  q_spec = nn.logical_to_mesh_axes(Q_NAMES, rules)
  kv_spec = nn.logical_to_mesh_axes(KV_NAMES, rules)
  length_axes = [a for a in _axes(q_spec[1]) if mesh.shape[a] > 1]
  if length_axes:
    raise ValueError(
        f"The logical axis rules map 'length' to mesh axes {length_axes} (mesh {dict(mesh.shape)}), which would "
        "shard the sequence axis of a Pallas attention kernel's inputs; the kernels need whole sequences on "
        "each device (sequence parallelism is not implemented). Map 'length' to None in "
        "config.logical_axis_rules, or use attention_impl='xla'.")

  batch, heads, kv_heads = q.shape[0], q.shape[-2], k.shape[-2]
  batch_axes = _dividing_prefix(mesh, _axes(q_spec[0]), batch)
  head_axes = tuple(a for a in _axes(q_spec[2]) if a not in batch_axes)
  if heads % _size(mesh, head_axes):
    head_axes = ()
  n_head_shards = _size(mesh, head_axes)
  kv_head_axes = tuple(a for a in _axes(kv_spec[2]) if a not in batch_axes)
  split_kv = bool(head_axes) and kv_head_axes == head_axes and kv_heads % n_head_shards == 0
  groups = heads // kv_heads

  def spec(ndim: int, head_entry) -> PartitionSpec:
    middle = [None] * (ndim - 3)
    return PartitionSpec(_spec_entry(batch_axes), *middle, head_entry, None)

  q_pspec = spec(q.ndim, _spec_entry(head_axes))
  kv_pspec = spec(k.ndim, _spec_entry(head_axes) if split_kv else None)
  side_pspec = PartitionSpec(_spec_entry(batch_axes), None)
  sides = [x for x in (*q_side, *kv_side) if x is not None]
  where = [x is not None for x in (*q_side, *kv_side)]
  n_q = len(q_side)

  def per_device(q_, k_, v_, *given):
    it = iter(given)
    filled = [next(it) if present else None for present in where]
    if head_axes and not split_kv:
      shard = jax.lax.axis_index(head_axes)
      k_, v_ = (_local_kv_heads(x, shard, heads // n_head_shards, groups) for x in (k_, v_))
    return fn(q_, k_, v_, *filled[:n_q], *filled[n_q:])

  return jax.shard_map(per_device, mesh=mesh, in_specs=(q_pspec, kv_pspec, kv_pspec, *[side_pspec] * len(sides)),
                       out_specs=q_pspec, check_vma=False)(q, k, v, *sides)
