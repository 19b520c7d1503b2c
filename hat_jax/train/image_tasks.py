"""Image tasks (`config.task` names in TASKS): the multi-scale VQ tokenizer, VAR, the Axial Transformer
and the raster-order AR baseline, on MNIST (or synthetic images for tests and smoke runs).

Image size: MNIST's 28x28 digits are zero-padded to 32x32 and, for `data.image_size=16` (the default),
2x2 average-pooled to 16x16 (`prepare_mnist_images`). 16 = 2 x 8 gives the VQ latent 8x8 and the scales
(1, 2, 3, 4, 6, 8); the pixel models (Axial, raster AR over pixels) see the same 16x16 images.

VAR and the raster AR over VQ tokens need a trained tokenizer: `config.tokenizer.params_path` is the
`vqvae_params.npz` that `VQVAETask.sample` (CLI `--mode=sample` of configs/vqvae.py) writes into
`config.sample.output_dir`; `config.tokenizer.model` must match the tokenizer's model config.
Label dropout for classifier-free guidance happens in the train iterator (labels replaced by the null
class with probability `model.cond_drop`), so `loss` is deterministic and eval batches keep their labels.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from hat_jax.models import axial as axial_lib
from hat_jax.models import raster_ar as raster_lib
from hat_jax.models import var as var_lib
from hat_jax.models.axial import AxialConfig, AxialTransformer
from hat_jax.models.layers import StackConfig
from hat_jax.models.raster_ar import RasterAR, RasterARConfig
from hat_jax.models.var import VAR, VARConfig, token_nll
from hat_jax.models.vqvae import MultiScaleVQVAE, VQConfig, reconstruction_metrics, to_unit_range
from hat_jax.data.iterators import Batch, StepIndexedBatches
from hat_jax.train.task import Metrics, Task

NUM_CLASSES = 10

# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


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


def load_images(data: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S], labels int32 [N]) for split "train" or "test"."""
  size = int(data.image_size)
  if data.source == "mnist":
    from hat_jax.data.mnist import load_mnist  # pylint: disable=g-import-not-at-top
    images, labels = load_mnist(split, data.get("cache_dir") or None)
    images = prepare_mnist_images(np.asarray(images), size)
  elif data.source == "synthetic":
    n = int(data.synthetic_examples) if split == "train" else max(1, int(data.synthetic_examples) // 4)
    images, labels = synthetic_images(n, size, seed=0 if split == "train" else 1)
  else:
    raise ValueError(f"Unknown config.data.source {data.source!r}; use 'mnist' or 'synthetic'.")
  limit = int(data.get("max_train_examples", 0) if split == "train" else data.get("eval_examples", 0))
  if limit > 0:
    images, labels = images[:limit], labels[:limit]
  return images, labels.astype(np.int32)


class ArrayBatches(StepIndexedBatches):
  """Infinite batches of rows drawn uniformly with replacement; deterministic in (seed, step, shard).
  Labels are replaced by `null_class` with probability `drop_rate` (CFG training). State = the step."""

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


# --------------------------------------------------------------------------------------------------
# Params on disk and image grids
# --------------------------------------------------------------------------------------------------


# Paths go through etils.epath so that exported params and sample grids land in a gs:// workdir too.


def save_params(path: str, params) -> None:
  flat = traverse_util.flatten_dict(nn.unbox(jax.device_get(params)), sep="/")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def load_params(path: str):
  if not epath.Path(path).exists():
    raise FileNotFoundError(
        f"Tokenizer params {path} not found. Train the tokenizer and export it first: python -m hat_jax.main "
        f"--config=configs/vqvae.py:tiny --workdir=runs/vqvae --mode=train_and_sample "
        f"--config.sample.output_dir={os.path.dirname(path) or '.'}, then set config.tokenizer.params_path.")
  with epath.Path(path).open("rb") as raw, np.load(raw) as f:
    # numpy, not jnp: the params may first be touched inside a trace (a Task's loss), and numpy constants
    # never become tracers.
    return traverse_util.unflatten_dict({k: np.asarray(f[k]) for k in f.files}, sep="/")


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """uint8 [N, H, W(, 1)] -> one uint8 [rows * (H + 1), cols * (W + 1)] image with 1-pixel gaps."""
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[..., 0]
  n, h, w = images.shape
  cols = -(-n // rows)
  grid = np.zeros((rows * (h + 1), cols * (w + 1)), np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
  return grid


def write_png(path: str, image: np.ndarray, upscale: int = 4) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    plt.imsave(f, np.kron(image, np.ones((upscale, upscale), np.uint8)), cmap="gray", vmin=0, vmax=255, format="png")


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


class _ImageTask(Task):
  """Shared data plumbing: `features(split)` -> dict of per-example arrays ("labels" + model inputs)."""

  unit = "images"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self._cache: dict[str, dict[str, np.ndarray]] = {}

  def features(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._cache:
      images, labels = load_images(self.config.data, split)
      self._cache[split] = self.make_features(images, labels)
    return self._cache[split]

  def make_features(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {"images": images, "labels": labels}

  def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1):
    batch = int(self.config.train.batch_size)
    if batch % process_count:
      raise ValueError(f"config.train.batch_size ({batch}) must divide over {process_count} processes.")
    return ArrayBatches(self.features("train"), batch // process_count, seed, (process_index, process_count),
                        drop_rate=float(self.config.model.get("cond_drop", 0.0)))

  def eval_batches(self) -> Iterable[Batch]:
    feats, size = self.features("test"), int(self.config.data.eval_batch_size)
    n = len(feats["labels"]) // size * size  # whole batches only (fixed shapes)
    return [{k: v[i:i + size] for k, v in feats.items()} for i in range(0, n, size)]

  def units_per_batch(self, batch: Batch) -> int:
    return int(len(batch["labels"]))

  def sample_labels(self) -> jax.Array:
    per_class = int(self.config.sample.per_class)
    return jnp.tile(jnp.arange(NUM_CLASSES, dtype=jnp.int32), per_class)

  def write_grid(self, images, name: str) -> str:
    path = os.path.join(self.config.sample.output_dir, name)
    write_png(path, image_grid(np.asarray(images), rows=int(self.config.sample.per_class)))
    return path


class VQVAETask(_ImageTask):
  def __init__(self, config):
    super().__init__(config)
    self.vq_cfg = VQConfig.from_config(config.model)
    self.model = MultiScaleVQVAE(self.vq_cfg)

  def init_params(self, rng):
    c = self.vq_cfg
    return self.model.init(rng, jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.uint8))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    out = self.model.apply(params, batch["images"])
    target = to_unit_range(jnp.asarray(batch["images"])).reshape(out["recon"].shape)
    recon_loss = jnp.mean((out["recon"] - target) ** 2)
    used = jnp.zeros(self.vq_cfg.vocab_size).at[jnp.concatenate([i.reshape(-1) for i in out["indices"]])].set(1.0)
    metrics = {"recon_loss": recon_loss, "vq_loss": out["vq_loss"], "codebook_used": jnp.mean(used),
               **reconstruction_metrics(jnp.asarray(batch["images"]), out["recon"])}
    return recon_loss + out["vq_loss"], metrics

  def sample(self, params, rng) -> str:
    """Export the tokenizer (vqvae_params.npz) and a grid of test images over their reconstructions."""
    del rng
    out_dir = self.config.sample.output_dir
    path = os.path.join(out_dir, "vqvae_params.npz")
    save_params(path, params)
    images = self.features("test")["images"][:8 * int(self.config.sample.per_class)]
    recon = self.model.apply(params, self.model.apply(params, images, method=MultiScaleVQVAE.encode),
                             method=MultiScaleVQVAE.decode)
    grid = self.write_grid(np.concatenate([images[..., None], np.asarray(recon)]), "vqvae_reconstructions.png")
    return f"wrote {path} and {grid}"


_TOKEN_CACHE: dict[tuple, np.ndarray] = {}


class _TokenizedTask(_ImageTask):
  """Tasks over the frozen tokenizer's multi-scale tokens: features are tokens [N, L] + labels."""

  def __init__(self, config):
    super().__init__(config)
    self.vq_cfg = VQConfig.from_config(config.tokenizer.model)
    self.vq = MultiScaleVQVAE(self.vq_cfg)
    self._vq_params = None

  @property
  def vq_params(self):
    if self._vq_params is None:
      self._vq_params = load_params(self.config.tokenizer.params_path)
    return self._vq_params

  def stub_frozen_inputs(self) -> None:
    """Zeros for the tokenizer's params (the loss reads its codebook and phi convs to build VAR's inputs)."""
    shapes = jax.eval_shape(lambda: self.vq.init(jax.random.key(0), jnp.zeros(
        (1, self.vq_cfg.image_size, self.vq_cfg.image_size, self.vq_cfg.channels), jnp.uint8)))
    self._vq_params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.unbox(shapes))

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"tokens": jax.ShapeDtypeStruct((batch_size, self.vq_cfg.seq_len), jnp.int32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def make_features(self, images, labels):
    vq_params = self.vq_params  # first: a missing tokenizer file gets its explanatory error
    # Keyed on the tokenizer file's content: a re-exported tokenizer at the same path re-tokenizes.
    params_digest = hashlib.sha256(epath.Path(self.config.tokenizer.params_path).read_bytes()).hexdigest()
    key = (params_digest, images.shape, hash(images.tobytes()))
    if key not in _TOKEN_CACHE:  # VAR and raster AR tasks in one process tokenize a split once
      encode = jax.jit(lambda p, x: self.vq.apply(p, x, method=MultiScaleVQVAE.encode))
      chunks = [np.asarray(encode(vq_params, images[i:i + 1000])) for i in range(0, len(images), 1000)]
      _TOKEN_CACHE[key] = np.concatenate(chunks).astype(np.int32)
    return {"tokens": _TOKEN_CACHE[key], "labels": labels}


def token_metrics(logits: jax.Array, tokens: jax.Array, pixels_per_image: int, tail: slice) -> tuple[jax.Array, Metrics]:
  """Mean token NLL (the loss, equal weight per position) plus bits per image / per pixel dim."""
  nll = token_nll(logits, tokens)  # [B, L]
  bits_per_image = jnp.mean(jnp.sum(nll, axis=1)) / math.log(2.0)
  return jnp.mean(nll), {
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == tokens),
      "tail_loss": jnp.mean(nll[:, tail]),
      "bits_per_image": bits_per_image,
      "bits_per_dim": bits_per_image / pixels_per_image,
  }


class VARTask(_TokenizedTask):
  def __init__(self, config):
    super().__init__(config)
    m, c = config.model, self.vq_cfg
    self.var_cfg = VARConfig(StackConfig.from_config(m.stack), scales=c.scales, vocab_size=c.vocab_size,
                             z_channels=c.z_channels, num_classes=NUM_CLASSES, dtype=m.get("dtype", "float32"))
    self.model = VAR(self.var_cfg, attention_impl=m.attention_impl)

  def init_params(self, rng):
    c = self.var_cfg
    return self.model.init(rng, jnp.zeros((1,), jnp.int32), jnp.zeros((1, c.seq_len - 1, c.z_channels)))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    tokens = jnp.asarray(batch["tokens"])
    x_in = self.vq.apply(self.vq_params, tokens, method=MultiScaleVQVAE.var_inputs)
    logits = self.model.apply(params, jnp.asarray(batch["labels"]), x_in)
    return token_metrics(logits, tokens, self.vq_cfg.image_size ** 2 * self.vq_cfg.channels,
                         self.var_cfg.scale_slice(len(self.var_cfg.scales) - 1))

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """"last_scale": the sampler's largest step, the last scale through the cached blocks with the
    classifier-free-guidance batch doubled ([labels; null])."""
    cfg, model, b = self.var_cfg, self.model, 2 * batch_size
    k = len(cfg.scales) - 1
    caches = jax.eval_shape(lambda: model.empty_caches(b))

    def last_scale(params, labels, x_k, caches):
      return model.apply(params, labels, x_k, k, caches, method=var_lib.VAR.step)

    return {"last_scale": (last_scale, (jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct(
        (b, cfg.scales[k] ** 2, cfg.z_channels), jnp.float32), caches))}

  def sample(self, params, rng) -> str:
    s = self.config.sample
    images, _ = var_lib.sample(self.model, params, self.vq, self.vq_params, self.sample_labels(), rng,
                               cfg_scale=float(s.cfg_scale), top_k=int(s.top_k), top_p=float(s.top_p))
    return f"wrote {self.write_grid(images, 'var_samples.png')} (rows: classes 0-9 repeated)"


class RasterARTask(_TokenizedTask):
  """`model.tokens="vq"`: the VAR tokens flattened coarse to fine; `"pixels"`: the raw 16x16 pixels."""

  def __init__(self, config):
    m = config.model
    if m.tokens not in ("vq", "pixels"):
      raise ValueError(f"config.model.tokens must be 'vq' or 'pixels', got {m.tokens!r}.")
    if m.tokens == "vq":
      super().__init__(config)
      seq_len, vocab = self.vq_cfg.seq_len, self.vq_cfg.vocab_size
    else:
      _ImageTask.__init__(self, config)
      seq_len, vocab = int(config.data.image_size) ** 2, 256
    self.pixels_per_image = int(config.data.image_size) ** 2
    self.ar_cfg = RasterARConfig(StackConfig.from_config(m.stack), seq_len=seq_len, vocab_size=vocab,
                                 num_classes=NUM_CLASSES)
    self.model = RasterAR(self.ar_cfg, attention_impl=m.attention_impl)

  def make_features(self, images, labels):
    if self.config.model.tokens == "vq":
      return super().make_features(images, labels)
    return {"tokens": images.reshape(len(images), -1).astype(np.int32), "labels": labels}

  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1,), jnp.int32), jnp.zeros((1, self.ar_cfg.seq_len), jnp.int32))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    tokens = jnp.asarray(batch["tokens"])
    logits = self.model.apply(params, jnp.asarray(batch["labels"]), tokens)
    return token_metrics(logits, tokens, self.pixels_per_image, slice(-self.ar_cfg.seq_len // 2, None))

  def sample(self, params, rng) -> str:
    s = self.config.sample
    tokens = raster_lib.sample(self.model, params, self.sample_labels(), rng, cfg_scale=float(s.cfg_scale),
                               top_k=int(s.top_k), top_p=float(s.top_p))
    if self.config.model.tokens == "vq":
      images = self.vq.apply(self.vq_params, tokens, method=MultiScaleVQVAE.decode)
    else:
      size = int(self.config.data.image_size)
      images = tokens.reshape(-1, size, size).astype(jnp.uint8)
    return f"wrote {self.write_grid(images, 'raster_ar_samples.png')} (rows: classes 0-9 repeated)"


class AxialTask(_ImageTask):
  def __init__(self, config):
    super().__init__(config)
    fields = {k: v for k, v in config.model.items() if k not in ("attention_impl", "cond_drop")}
    self.axial_cfg = AxialConfig.from_config({**fields, "image_size": int(config.data.image_size)})
    self.model = AxialTransformer(self.axial_cfg, attention_impl=config.model.attention_impl)

  def init_params(self, rng):
    s = self.axial_cfg.image_size
    return self.model.init(rng, jnp.zeros((1, s, s), jnp.uint8), jnp.zeros((1,), jnp.int32))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    images = jnp.asarray(batch["images"])
    logits = self.model.apply(params, images, jnp.asarray(batch["labels"]))
    bpd = axial_lib.bits_per_dim(logits, images.astype(jnp.int32).reshape(logits.shape[:3]))
    return bpd * math.log(2.0), {"bits_per_dim": bpd}

  def sample(self, params, rng) -> str:
    s = self.config.sample
    images = axial_lib.sample(self.model, params, self.sample_labels(), rng, top_k=int(s.top_k), top_p=float(s.top_p))
    return f"wrote {self.write_grid(images, 'axial_samples.png')} (rows: classes 0-9 repeated)"


TASKS: dict[str, type[Task]] = {"vqvae": VQVAETask, "var": VARTask, "axial": AxialTask, "raster_ar": RasterARTask}
