"""Class-labelled image data for the image tasks (hat_jax/train/image_tasks.py): MNIST or synthetic
strokes as uint8 arrays, their training and eval batches, and the frozen tokenizer's tokens of them.

Image size: MNIST's 28x28 digits are zero-padded to 32x32 and, for `image_size=16` (the configs'
default), 2x2 average-pooled to 16x16 (`prepare_mnist_images`). 16 = 2 x 8 gives the VQ latent 8x8 and
the scales (1, 2, 3, 4, 6, 8); the pixel models (Axial, raster AR over pixels) see the same 16x16 images.
Synthetic images (`synthetic_images`) need no download: tests and smoke runs.

A split is held in memory whole (MNIST: 60k x 16 x 16 bytes) as a dict of per-example arrays ("labels"
plus "images" or "tokens"); `ArrayBatches` draws training batches from it and `whole_batches` cuts the
fixed eval batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import jax
import numpy as np

from hat_jax.data import mnist
from hat_jax.data.iterators import Batch, StepIndexedBatches

NUM_CLASSES = 10  # MNIST digits, and the synthetic strokes' angles


def prepare_mnist_images(images: np.ndarray, image_size: int = 16) -> np.ndarray:
  """uint8 [N, 28, 28] -> uint8 [N, S, S]: zero-pad to 32x32, then average-pool by 32 / S (S = 32 or 16)."""
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ValueError(f"Expected MNIST images [N, 28, 28], got {images.shape}.")
  if image_size not in (16, 32):
    raise ValueError(f"MNIST image_size must be 16 or 32 (28 padded to 32, optionally pooled 2x2), got {image_size}.")
  padded = np.pad(images.astype(np.float32), ((0, 0), (2, 2), (2, 2)))
  f = 32 // image_size
  pooled = padded.reshape(len(images), image_size, f, image_size, f).mean(axis=(2, 4))
  return np.round(pooled).astype(np.uint8)


def synthetic_images(n: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Class-dependent strokes (class c: a line at angle 18c degrees, jittered), uint8 [n, S, S] and labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint8)
  yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) - (image_size - 1) / 2
  angle = np.deg2rad(18.0 * labels + rng.normal(0, 4, n))[:, None, None]
  shift = rng.normal(0, image_size / 16, (n, 2))[:, :, None, None]
  dist = np.abs((xx - shift[:, 0]) * np.sin(angle) - (yy - shift[:, 1]) * np.cos(angle))
  width = rng.uniform(0.6, 1.2, n)[:, None, None] * image_size / 16
  images = 255.0 * np.exp(-(dist / width) ** 2) * (np.hypot(xx, yy) < image_size * 0.4)
  return np.round(images).astype(np.uint8), labels


def load_images(data: Mapping, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S], labels int32 [N]) for split "train" or "test" of `config.data` (source
  "mnist" or "synthetic", image_size, cache_dir, synthetic_examples, max_train_examples, eval_examples)."""
  size = int(data["image_size"])
  if data["source"] == "mnist":
    images, labels = mnist.load_mnist(split, data.get("cache_dir") or None)
    images = prepare_mnist_images(np.asarray(images), size)
  elif data["source"] == "synthetic":
    n = int(data["synthetic_examples"]) if split == "train" else max(1, int(data["synthetic_examples"]) // 4)
    images, labels = synthetic_images(n, size, seed=0 if split == "train" else 1)
  else:
    raise ValueError(f"Unknown config.data.source {data['source']!r}; use 'mnist' or 'synthetic'.")
  limit = int(data.get("max_train_examples", 0) if split == "train" else data.get("eval_examples", 0))
  if limit > 0:
    images, labels = images[:limit], labels[:limit]
  return images, labels.astype(np.int32)


def pixel_tokens(images: np.ndarray) -> np.ndarray:
  """uint8 [N, S, S] -> int32 [N, S * S]: the pixels as a token sequence in raster order (V = 256)."""
  return images.reshape(len(images), -1).astype(np.int32)


def pixel_images(tokens: np.ndarray, image_size: int) -> np.ndarray:
  """The inverse of `pixel_tokens`: int [N, S * S] -> uint8 [N, S, S]."""
  return np.asarray(tokens).reshape(-1, image_size, image_size).astype(np.uint8)


class ArrayBatches(StepIndexedBatches):
  """Infinite batches of rows drawn uniformly with replacement; deterministic in (seed, step, shard).
  Labels are replaced by `null_class` with probability `drop_rate`: the label dropout that trains the
  unconditional half of classifier-free guidance happens here, so a task's loss stays deterministic and
  eval batches keep their labels. State = the step."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, shard: tuple[int, int] = (0, 1),
               drop_rate: float = 0.0, null_class: int = NUM_CLASSES):
    super().__init__(seed, shard)
    self.arrays, self.batch_size = arrays, batch_size
    self.drop_rate, self.null_class = drop_rate, null_class
    self.size = len(next(iter(arrays.values())))

  def make_batch(self, rng: np.random.Generator) -> Batch:
    idx = rng.integers(0, self.size, self.batch_size)
    batch = {k: v[idx] for k, v in self.arrays.items()}
    if self.drop_rate > 0:
      batch["labels"] = np.where(rng.random(self.batch_size) < self.drop_rate, self.null_class, batch["labels"])
    return batch


def whole_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[Batch]:
  """Consecutive batches of `batch_size` rows, in order; a last partial batch is dropped (fixed shapes:
  one compiled eval step)."""
  n = len(next(iter(arrays.values()))) // batch_size * batch_size
  return [{k: v[i:i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------------
# Tokens of a frozen tokenizer


def params_digest(params) -> str:
  """sha256 of a params pytree's content (paths, dtypes, shapes and values): equal for equal params,
  whichever file or run they were read from."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


_TOKEN_CACHE: dict[tuple, np.ndarray] = {}


def tokenize_images(encode: Callable[[object, np.ndarray], jax.Array], params, images: np.ndarray,
                    chunk: int = 1000) -> np.ndarray:
  """int32 tokens [N, L] = encode(params, images) over chunks of `chunk` images (bounded memory).

  Cached per process, keyed on the tokenizer params' content and the images: the VAR and raster-AR tasks
  of one process (the images benchmark) tokenize a split once, and a re-trained tokenizer re-tokenizes.
  """
  key = (params_digest(params), images.shape, hash(images.tobytes()))
  if key not in _TOKEN_CACHE:
    chunks = [np.asarray(encode(params, images[i:i + chunk])) for i in range(0, len(images), chunk)]
    _TOKEN_CACHE[key] = np.concatenate(chunks).astype(np.int32)
  return _TOKEN_CACHE[key]
