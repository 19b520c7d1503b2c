"""Array fingerprints (hat_jax.train.integrity): any changed word is seen, and the value does not depend
on how the array is sharded (a checkpoint written on one mesh verifies on another)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hat_jax.train import integrity

_DTYPES = [np.float32, jnp.bfloat16, np.int8, np.uint16, np.int32, np.bool_]


def _array(dtype, shape, seed=0):
  rng = np.random.default_rng(seed)
  if dtype == np.bool_:
    return rng.random(shape) > 0.5
  if np.dtype(dtype).kind in "iu":
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
  return rng.normal(size=shape).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(dtype_index=st.integers(0, len(_DTYPES) - 1), flat_index=st.integers(0, 6 * 7 - 1),
       bit=st.integers(0, 31))
def test_any_single_bit_flip_changes_the_fingerprint(dtype_index, flat_index, bit):
  dtype = _DTYPES[dtype_index]
  x = np.asarray(_array(dtype, (6, 7)))
  bits = 1 if dtype == np.bool_ else np.dtype(dtype).itemsize * 8
  damaged = x.copy()
  if dtype == np.bool_:
    damaged.reshape(-1)[flat_index] ^= True
  else:
    view = damaged.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[np.dtype(dtype).itemsize])
    view[flat_index] ^= view.dtype.type(1 << (bit % bits))
  before = integrity.fingerprint_tree({"x": jnp.asarray(x)})
  after = integrity.fingerprint_tree({"x": jnp.asarray(damaged)})
  key = "['x']"
  assert integrity.mismatches(before, after) == [f"{key}: stored fingerprint {before[key]}, read back {after[key]}"]


def test_swapped_and_moved_values_change_the_fingerprint():
  x = jnp.arange(12.0).reshape(3, 4)
  base = integrity.fingerprint_tree(x)
  assert integrity.fingerprint_tree(x.T.reshape(3, 4)) != base  # same values, other places
  assert integrity.fingerprint_tree(x[::-1]) != base
  assert integrity.fingerprint_tree(x.reshape(4, 3)) == {"": base[""]}  # bits in row-major order only


def test_fingerprint_is_the_same_on_any_mesh():
  devices = np.asarray(jax.devices()[:8])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 24)).astype(np.float32))
  expected = integrity.fingerprint_tree({"w": x})
  for mesh_shape, spec in (((8,), P("a")), ((8,), P(None, "a")), ((2, 4), P("a", "b")), ((4, 2), P("b", "a"))):
    mesh = Mesh(devices.reshape(mesh_shape), ("a", "b")[:len(mesh_shape)])
    sharded = jax.device_put(x, NamedSharding(mesh, spec))
    assert integrity.fingerprint_tree({"w": sharded}) == expected, (mesh_shape, spec)


def test_mismatches_names_each_changed_and_unknown_array():
  stored = {"['a']": [1, 2], "['b']": [3, 4]}
  assert integrity.mismatches(stored, {"['a']": [1, 2], "['b']": [3, 5], "['c']": [0, 0]}) == [
      "['b']: stored fingerprint [3, 4], read back [3, 5]", "['c']: no stored fingerprint"]


def test_json_checksum_ignores_key_order_only():
  assert integrity.json_checksum({"a": 1, "b": [2]}) == integrity.json_checksum({"b": [2], "a": 1})
  assert integrity.json_checksum({"a": 1}) != integrity.json_checksum({"a": 2})


def test_unsupported_dtype_is_a_clear_error():
  with pytest.raises(TypeError, match="Cannot fingerprint an array of dtype complex64"):
    integrity.fingerprint_tree(jnp.zeros(2, jnp.complex64))


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.int8])
def test_large_host_arrays_are_fingerprinted_in_chunks_with_the_same_result(monkeypatch, dtype):
  x = np.asarray(_array(dtype, (37, 5, 3), seed=2))
  on_device = integrity.fingerprint_tree({"x": jnp.asarray(x)})
  monkeypatch.setattr(integrity, "_HOST_CHUNK_BYTES", 40)  # a few rows per chunk, last chunk partial
  assert integrity.fingerprint_tree({"x": x}) == on_device
