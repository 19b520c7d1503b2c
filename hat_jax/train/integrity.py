"""Fingerprints of saved arrays and JSON, so a checkpoint that changed on disk is caught on restore.

Orbax's formats do not checksum array data: zarr v2 chunks carry none, and orbax's zarr v3 layout puts
a crc32c on the shard *index* only. Flipped bits inside a compressed chunk therefore either fail to
decompress (a raw tensorstore error) or decode to other numbers that load silently. So every array is
fingerprinted where it lives, before it is written, and again after it is read back.

The fingerprint of an array is two uint32 sums over its bits viewed as 32-bit words `w[i]` (i the
row-major index of the word in the *global* array):

    a = sum_i w[i] * (2i + 1)                       mod 2^32
    b = sum_i rotl(w[i] * 0x9E3779B1 + i, 1 + i % 31)   mod 2^32

Both are elementwise maps followed by one integer sum, so under `jit` each device reduces its own shard
and one small all-reduce combines them (no gather, no host copy), and integer addition makes the result
exact whatever the mesh: a checkpoint written on 256 chips verifies on 8. `a` changes for *any* change of
a single word (2i+1 is odd, hence invertible mod 2^32); `b` mixes bits and positions so that multi-word
damage cancelling in `a` is caught too. It detects accidents (bit rot, truncation, partial copies), not
tampering: it is not a cryptographic hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = "u32-weighted-sum-and-rotl-sum/v1"

_GOLDEN = np.uint32(0x9E3779B1)


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (narrower dtypes widened, 64-bit split into a trailing pair)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise TypeError(f"Cannot fingerprint an array of dtype {x.dtype}.")
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  raise TypeError(f"Cannot fingerprint an array of dtype {x.dtype}.")


def _fingerprint(x: jax.Array, offset=np.uint32(0)) -> jax.Array:
  """[2] uint32 for one array; elementwise + sum only, so it stays sharded until the final reduction.
  `offset`: the linear index of x's first word in a larger array it is a leading-axis slice of."""
  w = _words(x)
  # The linear index from per-axis iotas (no reshape: flattening a sharded array would move data).
  index = jnp.full(w.shape, offset, jnp.uint32) if w.ndim == 0 else jnp.zeros(w.shape, jnp.uint32)
  for axis, size in enumerate(w.shape):
    index = index * np.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
  if w.ndim:
    index = index + offset
  terms_a = w * (index * np.uint32(2) + np.uint32(1))
  mixed = w * _GOLDEN + index
  shift = index % np.uint32(31) + np.uint32(1)
  terms_b = (mixed << shift) | (mixed >> (np.uint32(32) - shift))
  # One variadic reduction: both sums in one pass over the array, so no [shape]-sized temporaries (two
  # separate sums made XLA's CPU backend materialise their inputs, +1x the array's size in memory).
  zero = np.uint32(0)
  a, b = jax.lax.reduce((terms_a, terms_b), (zero, zero), lambda x, y: (x[0] + y[0], x[1] + y[1]),
                        tuple(range(w.ndim)))
  return jnp.stack([a, b])


@jax.jit
def fingerprint_leaves(leaves: list) -> list:
  """[2] uint32 per array of `leaves` (jitted: lower it for ahead-of-time cost, see `hat_jax.aot`)."""
  return [_fingerprint(x) for x in leaves]


_fingerprint_one = jax.jit(_fingerprint)
_HOST_CHUNK_BYTES = 64 << 20


def _fingerprint_host(x: np.ndarray) -> np.ndarray:
  """The fingerprint of a host array, computed over leading-axis chunks of at most 64 MiB (each moved to
  the device alone), so a large host array is never copied whole. Exact: both sums are additive over
  chunks once each chunk's words carry their global index."""
  x = np.asarray(x)
  if x.ndim == 0 or x.nbytes <= _HOST_CHUNK_BYTES:
    return np.asarray(jax.device_get(_fingerprint_one(jnp.asarray(x))))
  rows = max(1, _HOST_CHUNK_BYTES // max(1, x[0].nbytes))
  per_row = int(np.prod(x.shape[1:])) * (2 if x.dtype.itemsize == 8 else 1)  # uint32 words per row
  total = np.zeros(2, np.uint32)
  for start in range(0, x.shape[0], rows):
    part = jax.device_get(_fingerprint_one(jnp.asarray(x[start:start + rows]), np.uint32((start * per_row) % 2**32)))
    total = total + np.asarray(part, np.uint32)  # uint32 wraparound, as on device
  return total


def fingerprint_tree(tree: Any) -> dict[str, list[int]]:
  """{keystr path: [a, b]} for every array leaf of `tree`, computed where the arrays live.

  Device arrays (the trainer's state): one compiled reduction for the whole tree. Host (numpy) leaves
  (converted or exported params) are moved to the device one at a time, so fingerprinting a large host
  tree never holds a second copy of it. The result is a few bytes per array."""
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [jax.tree_util.keystr(path) for path, _ in paths_and_leaves]
  leaves = [x for _, x in paths_and_leaves]
  if all(isinstance(x, jax.Array) for x in leaves):
    values = jax.device_get(fingerprint_leaves(leaves))
  else:
    values = [jax.device_get(_fingerprint_one(x)) if isinstance(x, jax.Array) else _fingerprint_host(x)
              for x in leaves]
  return {path: [int(v) for v in np.asarray(value)] for path, value in zip(paths, values)}


def mismatches(expected: dict[str, list[int]], actual: dict[str, list[int]]) -> list[str]:
  """Human-readable differences between stored and recomputed fingerprints (paths of `actual` only:
  a partial restore verifies the arrays it read)."""
  wrong = []
  for path, value in actual.items():
    if path not in expected:
      wrong.append(f"{path}: no stored fingerprint")
    elif list(expected[path]) != list(value):
      wrong.append(f"{path}: stored fingerprint {list(expected[path])}, read back {list(value)}")
  return wrong


def json_checksum(value: Any) -> str:
  """sha256 of the canonical JSON of `value` (sorted keys, no spaces): equal values, equal checksums."""
  canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()
