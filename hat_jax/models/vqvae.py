"""Multi-scale residual VQ tokenizer (VAR's VQVAE), small enough for MNIST on CPU.

Reads top to bottom like VAR's Algorithms 1 and 2:

  image [B, H, W, C]  --Encoder-->  f [B, h, w, Cvae]            (h = H / 2**num_down)
  for k, pn in enumerate(scales):                                 (scales end at h, e.g. (1,2,3,4,6,8))
      r_k   = argmin_v || area_down(f_rest, pn) - Z_v ||          token map [B, pn, pn] (one codebook Z)
      z_k   = phi_k(cubic_up(Z[r_k], h))                          phi convs shared across scales
      f_hat += z_k ;  f_rest -= z_k                               residual accumulation
  f_hat  --Decoder-->  reconstruction [B, H, W, C]

The last scale is full resolution, so its resamplers are identities. `var_inputs` produces the VAR
transformer's teacher-forcing inputs: the input at scale k+1 is the area-downsampled running sum
f_hat_{<=k}. Images enter as uint8 [B, H, W] or [B, H, W, C] (0..255) and are mapped to [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.models.layers import check_images, dataclass_from_config

# ---------------------------------------------------------------------------------------------------
# Config and input range


@dataclasses.dataclass(frozen=True)
class VQConfig:
  image_size: int = 16  # H = W
  channels: int = 1
  ch: int = 32  # base conv width
  ch_mult: tuple[int, ...] = (1, 2)  # one level per entry; len - 1 stride-2 downsamplings
  z_channels: int = 16  # Cvae, the codebook vector size
  vocab_size: int = 256  # V, one codebook shared by all scales
  scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)  # token-map side per scale; the last = latent side
  num_phi: int = 2  # phi convs shared across scales (VAR: 4 for 10 scales)
  phi_ratio: float = 0.5  # phi(x) = (1 - r) x + r conv(x)
  beta: float = 0.25  # commitment weight

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
    object.__setattr__(self, "scales", tuple(self.scales))
    if not self.scales or list(self.scales) != sorted(set(self.scales)) or self.scales[0] < 1:
      raise ValueError(f"scales must be strictly increasing positive ints, got {self.scales}.")
    down = 2 ** (len(self.ch_mult) - 1)
    if self.image_size % down:
      raise ValueError(f"image_size {self.image_size} is not divisible by the encoder's downsampling {down} "
                       f"(ch_mult={self.ch_mult}).")
    if self.scales[-1] != self.latent_size:
      raise ValueError(f"The last scale must equal the latent side image_size/{down} = {self.latent_size}, got "
                       f"scales={self.scales}; e.g. use scales ending in {self.latent_size}.")
    if not 1 <= self.num_phi <= len(self.scales):
      raise ValueError(f"num_phi must be in [1, {len(self.scales)}] (number of scales), got {self.num_phi}.")

  @property
  def latent_size(self) -> int:
    return self.image_size // 2 ** (len(self.ch_mult) - 1)

  @property
  def seq_len(self) -> int:
    """L = sum of pn^2: tokens per image over all scales."""
    return sum(pn * pn for pn in self.scales)

  @classmethod
  def from_config(cls, cfg) -> "VQConfig":
    return dataclass_from_config(cls, cfg, "VQVAE")


def to_unit_range(pixels: jax.Array) -> jax.Array:
  """int 0..255 -> float32 in [-1, 1]."""
  return pixels.astype(jnp.float32) / 127.5 - 1.0


def to_pixels(x: jax.Array) -> jax.Array:
  """float in [-1, 1] -> uint8 0..255."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# ---------------------------------------------------------------------------------------------------
# Resamplers: area down (residual and next-scale input), cubic up (token maps)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of area interpolation (= adaptive average pooling)."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def area_resize(x: jax.Array, size: int) -> jax.Array:
  """[B, h, w, C] -> [B, size, size, C] by area averaging (identity when the size already matches)."""
  if x.shape[1] == size and x.shape[2] == size:
    return x
  mh, mw = jnp.asarray(area_matrix(x.shape[1], size)), jnp.asarray(area_matrix(x.shape[2], size))
  return jnp.einsum("oh,pw,bhwc->bopc", mh, mw, x)


def cubic_upsample(x: jax.Array, size: int) -> jax.Array:
  """[B, pn, pn, C] -> [B, size, size, C] by bicubic interpolation (identity at full size)."""
  if x.shape[1] == size and x.shape[2] == size:
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "cubic")


def phi_index(scale: int, num_scales: int, num_phi: int) -> int:
  """Which shared phi conv serves `scale`: the one whose tick is nearest scale/(K-1) (VAR's PhiPartiallyShared)."""
  if num_phi == 1:
    return 0
  ticks = np.linspace(1 / (3 * num_phi), 1 - 1 / (3 * num_phi), num_phi)
  return int(np.argmin(np.abs(ticks - scale / max(num_scales - 1, 1))))


# ---------------------------------------------------------------------------------------------------
# Conv encoder / decoder


def conv_init():
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "conv_out"))


def bias_init(axis: str = "conv_out"):
  return nn.with_logical_partitioning(nn.initializers.zeros, (axis,))


def conv(features: int, name: str | None = None, stride: int = 1) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=1, kernel_init=conv_init(),
                 bias_init=bias_init(), name=name)


def norm(features: int) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=math.gcd(8, features), bias_init=bias_init("norm"),
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)))


class ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):  # [B, h, w, C_in] -> [B, h, w, features]
    h = conv(self.features)(nn.silu(norm(x.shape[-1])(x)))
    h = conv(self.features)(nn.silu(norm(self.features)(h)))
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("conv_in", "conv_out")), bias_init=bias_init(), name="skip")(x)
    return x + h


class Encoder(nn.Module):
  cfg: VQConfig

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] in [-1, 1] -> f [B, h, w, Cvae]
    cfg = self.cfg
    x = conv(cfg.ch)(x)
    for level, mult in enumerate(cfg.ch_mult):
      x = ResBlock(cfg.ch * mult)(x)
      if level < len(cfg.ch_mult) - 1:
        x = conv(cfg.ch * mult, stride=2)(x)
    x = ResBlock(x.shape[-1])(x)
    x = conv(cfg.z_channels)(nn.silu(norm(x.shape[-1])(x)))
    return conv(cfg.z_channels, name="quant_conv")(x)


class Decoder(nn.Module):
  cfg: VQConfig

  @nn.compact
  def __call__(self, f):  # f_hat [B, h, w, Cvae] -> [B, H, W, C] (unbounded; target range [-1, 1])
    cfg = self.cfg
    x = conv(cfg.z_channels, name="post_quant_conv")(f)
    x = conv(cfg.ch * cfg.ch_mult[-1])(x)
    x = ResBlock(x.shape[-1])(x)
    for level in reversed(range(len(cfg.ch_mult))):
      x = ResBlock(cfg.ch * cfg.ch_mult[level])(x)
      if level > 0:
        b, h, w, c = x.shape
        x = conv(c)(jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest"))
    return conv(cfg.channels)(nn.silu(norm(x.shape[-1])(x)))


# ---------------------------------------------------------------------------------------------------
# Multi-scale residual quantizer


class Phi(nn.Module):
  """phi(x) = (1 - r) x + r conv3x3(x): the refinement applied to an upsampled token map."""

  ratio: float

  @nn.compact
  def __call__(self, x):
    return (1.0 - self.ratio) * x + self.ratio * conv(x.shape[-1])(x)


def codebook_init(vocab_size: int):
  """Uniform on [-1/V, 1/V], as in VQGAN/VAR."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0 / vocab_size, 1.0 / vocab_size)
  return init


class MultiScaleQuantizer(nn.Module):
  cfg: VQConfig

  def setup(self):
    cfg = self.cfg
    self.codebook = self.param(
        "codebook", nn.with_logical_partitioning(codebook_init(cfg.vocab_size), ("vocab", "embed")),
        (cfg.vocab_size, cfg.z_channels))
    self.phis = [Phi(cfg.phi_ratio, name=f"phi_{i}") for i in range(cfg.num_phi)]

  def nearest(self, z: jax.Array) -> jax.Array:
    """z [B, pn, pn, Cvae] -> indices [B, pn, pn] of the nearest codebook vectors (squared L2)."""
    book = self.codebook
    d = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * jnp.einsum("bhwc,vc->bhwv", z, book)
         + jnp.sum(book * book, -1))
    return jnp.argmin(d, axis=-1).astype(jnp.int32)

  def embed(self, idx: jax.Array) -> jax.Array:
    """indices [B, pn, pn] -> code vectors [B, pn, pn, Cvae]."""
    return jnp.take(self.codebook, idx, axis=0)

  def scale_contribution(self, idx: jax.Array, k: int) -> jax.Array:
    """z_k = phi_k(cubic_up(Z[r_k])): scale k's additive contribution to f_hat, [B, h, w, Cvae]."""
    cfg = self.cfg
    up = cubic_upsample(self.embed(idx), cfg.latent_size)
    return self.phis[phi_index(k, len(cfg.scales), cfg.num_phi)](up)

  def __call__(self, f: jax.Array):
    """Algorithm 1. f [B, h, w, Cvae] -> (f_hat straight-through, indices per scale, vq loss)."""
    cfg = self.cfg
    f_rest = jax.lax.stop_gradient(f)
    f_hat = jnp.zeros_like(f)
    indices, vq_loss = [], 0.0
    for k, pn in enumerate(cfg.scales):
      idx = self.nearest(area_resize(f_rest, pn))  # [B, pn, pn]
      z = self.scale_contribution(idx, k)
      f_hat, f_rest = f_hat + z, f_rest - z
      vq_loss += (cfg.beta * jnp.mean((jax.lax.stop_gradient(f_hat) - f) ** 2)
                  + jnp.mean((f_hat - jax.lax.stop_gradient(f)) ** 2))
      indices.append(idx)
    f_hat_st = f + jax.lax.stop_gradient(f_hat - f)  # straight-through to the encoder
    return f_hat_st, indices, vq_loss / len(cfg.scales)


# ---------------------------------------------------------------------------------------------------
# The tokenizer


class MultiScaleVQVAE(nn.Module):
  """Methods (call with `model.apply(params, ..., method=...)`):

  __call__(images)             -> dict(recon [B,H,W,C] in [-1,1], vq_loss, indices: list of [B,pn,pn])
  encode(images)               -> tokens [B, L] int32, scales concatenated coarse to fine, row-major
  decode(tokens)               -> uint8 images [B, H, W, C]
  var_inputs(tokens)           -> [B, L - scales[0]^2, Cvae]: VAR teacher-forcing inputs for scales 2..K
  next_input(f_hat, idx, k)    -> (f_hat + z_k, area-down(f_hat + z_k) to scale k+1 flattened) for sampling
  fhat_to_images(f_hat)        -> uint8 images
  """

  cfg: VQConfig

  def setup(self):
    self.encoder = Encoder(self.cfg, name="encoder")
    self.quantizer = MultiScaleQuantizer(self.cfg, name="quantizer")
    self.decoder = Decoder(self.cfg, name="decoder")

  def _features(self, images) -> jax.Array:
    return self.encoder(to_unit_range(check_images(images, self.cfg.image_size, self.cfg.channels)))

  def __call__(self, images):
    f = self._features(images)
    f_hat, indices, vq_loss = self.quantizer(f)
    return {"recon": self.decoder(f_hat), "vq_loss": vq_loss, "indices": indices}

  def encode(self, images) -> jax.Array:
    _, indices, _ = self.quantizer(self._features(images))
    return jnp.concatenate([i.reshape(i.shape[0], -1) for i in indices], axis=1)

  def split_tokens(self, tokens: jax.Array) -> list[jax.Array]:
    """[B, L] -> list of [B, pn, pn] token maps."""
    if tokens.ndim != 2 or tokens.shape[1] != self.cfg.seq_len:
      raise ValueError(f"Expected tokens [batch, {self.cfg.seq_len}] (sum of scales^2 for scales "
                       f"{self.cfg.scales}), got shape {tokens.shape}.")
    out, start = [], 0
    for pn in self.cfg.scales:
      out.append(tokens[:, start:start + pn * pn].reshape(-1, pn, pn))
      start += pn * pn
    return out

  def tokens_to_fhat(self, tokens: jax.Array) -> jax.Array:
    """Algorithm 2 without the decoder: f_hat = sum_k z_k, [B, h, w, Cvae]."""
    return sum(self.quantizer.scale_contribution(idx, k) for k, idx in enumerate(self.split_tokens(tokens)))

  def fhat_to_images(self, f_hat: jax.Array) -> jax.Array:
    return to_pixels(self.decoder(f_hat))

  def decode(self, tokens: jax.Array) -> jax.Array:
    return self.fhat_to_images(self.tokens_to_fhat(tokens))

  def next_input(self, f_hat: jax.Array, idx: jax.Array, k: int) -> tuple[jax.Array, jax.Array | None]:
    """Accumulate scale k's tokens [B, pn_k, pn_k] into f_hat and return the next scale's VAR input
    [B, pn_{k+1}^2, Cvae] (None after the last scale)."""
    f_hat = f_hat + self.quantizer.scale_contribution(idx, k)
    if k + 1 == len(self.cfg.scales):
      return f_hat, None
    pn = self.cfg.scales[k + 1]
    return f_hat, area_resize(f_hat, pn).reshape(f_hat.shape[0], pn * pn, -1)

  def var_inputs(self, tokens: jax.Array) -> jax.Array:
    maps = self.split_tokens(tokens)
    f_hat = jnp.zeros((tokens.shape[0], self.cfg.latent_size, self.cfg.latent_size, self.cfg.z_channels))
    inputs = []
    for k, idx in enumerate(maps[:-1]):
      f_hat, nxt = self.next_input(f_hat, idx, k)
      inputs.append(nxt)
    return jnp.concatenate(inputs, axis=1)


def reconstruction_metrics(images_uint8: jax.Array, recon: jax.Array) -> dict[str, jax.Array]:
  """MSE on [0, 1] pixels, PSNR in dB, L1; recon is float in [-1, 1]."""
  target = images_uint8.astype(jnp.float32) / 255.0
  pred = jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0).reshape(target.shape)
  mse = jnp.mean((pred - target) ** 2)
  return {"recon_mse": mse, "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
          "recon_l1": jnp.mean(jnp.abs(pred - target))}
