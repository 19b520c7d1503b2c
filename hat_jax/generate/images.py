"""Class-conditional image sampling for the image families, and sample grids as PNG files.

  images, tokens = generate_var(var, var_params, vq, vq_params, labels, rng, cfg_scale=2.0)  # next-scale
  images, tokens, revealed_at = generate_hmar(hmar, hmar_params, vq, vq_params, labels, rng,
                                              steps=(1, 1, 2, 2, 3, 4))               # masked steps per scale
  tokens = generate_raster_ar(lm, params, labels, rng, num_tokens=130, cfg_scale=2.0)        # token by token
  images = generate_axial(model, params, labels, rng)                                        # row by row
  write_png(path, image_grid(images, rows=4))

Each `generate_<family>` is one jitted program (`loop_jit`) that runs the model's cached step (`VAR.step`,
a `DecoderLM` with KV caches for the raster AR, `AxialTransformer.context` / `inner_logits`) once per
sequential pass and draws every token with `hat_jax.generate.sampling` (`sampling`: a SamplingConfig;
temperature 0 = greedy). The rng is folded in per pass, so a call is a pure function of its arguments.

Classifier-free guidance (VAR, raster AR): the batch is doubled ([labels; null class], the last class id,
which training sees through label dropout) and the two halves' logits are combined as
(1 + t) cond - t uncond. VAR ramps t linearly from 0 at the first scale to `cfg_scale` at the last (the
coarse scales decide the layout, where strong guidance costs diversity); the raster AR uses `cfg_scale`
at every step, and `cfg_scale=0` skips the doubling. The Axial Transformer has no null class: no CFG.
HMAR guides as VAR does, with the same t at every masked step of a scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from hat_jax.generate.loop_jit import loop_jit
from hat_jax.generate.sampling import SamplingConfig, filtered_logits, sample
from hat_jax.models import hmar as hmar_lib
from hat_jax.models import layers
from hat_jax.models.axial import AxialTransformer
from hat_jax.models.decoder_lm import DecoderLM
from hat_jax.models.hmar import HMAR
from hat_jax.models.var import VAR
from hat_jax.models.vqvae import MultiScaleVQVAE

# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance


def cfg_ramp(cfg_scale: float, k: int, num_scales: int) -> float:
  """Guidance at scale k: 0 at the first scale, `cfg_scale` at the last (VAR's linear ramp)."""
  return cfg_scale * k / max(num_scales - 1, 1)


def guided_logits(logits: jax.Array, guidance: float) -> jax.Array:
  """logits [2B, ...] = [cond; uncond] -> (1 + t) cond - t uncond, [B, ...]."""
  cond, uncond = jnp.split(logits, 2, axis=0)
  return (1.0 + guidance) * cond - guidance * uncond


def with_null_class(labels: jax.Array, num_classes: int) -> jax.Array:
  """[B] -> [2B]: the labels, then as many null-class labels (the unconditional half of CFG)."""
  return jnp.concatenate([labels, jnp.full_like(labels, num_classes)])


# ---------------------------------------------------------------------------------------------------
# Samplers


@loop_jit(static_argnames=("var", "vq", "cfg_scale", "sampling"))
def generate_var(var: VAR, var_params, vq: MultiScaleVQVAE, vq_params, labels: jax.Array, rng: jax.Array, *,
                 cfg_scale: float = 2.0, sampling: SamplingConfig = SamplingConfig()):
  """Next-scale sampling: one cached VAR step per scale, CFG ramped over the scales.

  labels [B] -> (images uint8 [B, H, W, C], tokens [B, L]). After each scale the tokenizer adds the
  sampled map to f_hat and area-downsamples the running sum into the next scale's input (the same
  `next_input` that builds the teacher-forcing inputs), so the sampler sees what training saw.
  """
  cfg = var.cfg
  batch = labels.shape[0]
  both = with_null_class(labels, cfg.num_classes)
  caches = var.empty_caches(2 * batch)
  side = cfg.scales[-1]
  f_hat = jnp.zeros((batch, side, side, cfg.z_channels), jnp.float32)
  x_k, tokens = None, []
  for k, pn in enumerate(cfg.scales):
    logits, caches = var.apply(var_params, both, x_k, k, caches, method=VAR.step)  # [2B, pn^2, V]
    logits = guided_logits(logits, cfg_ramp(cfg_scale, k, len(cfg.scales)))
    idx = sample(logits, jax.random.fold_in(rng, k), sampling)
    tokens.append(idx)
    f_hat, nxt = vq.apply(vq_params, f_hat, idx.reshape(batch, pn, pn), k, method=MultiScaleVQVAE.next_input)
    if nxt is not None:
      x_k = jnp.concatenate([nxt, nxt], axis=0)  # both CFG halves continue from the guided sample
  images = vq.apply(vq_params, f_hat, method=MultiScaleVQVAE.fhat_to_images)
  return images, jnp.concatenate(tokens, axis=1)


def tokenizer_codebook(vq: MultiScaleVQVAE) -> jax.Array:
  """The tokenizer's codebook [V, Cvae] (`vq.apply(vq_params, method=tokenizer_codebook)`): HMAR's token inputs."""
  return vq.quantizer.codebook


@loop_jit(static_argnames=("hmar", "vq", "steps", "cfg_scale", "sampling", "choice_temperature"))
def generate_hmar(hmar: HMAR, hmar_params, vq: MultiScaleVQVAE, vq_params, labels: jax.Array, rng: jax.Array, *,
                  steps, cfg_scale: float = 2.0, sampling: SamplingConfig = SamplingConfig(),
                  choice_temperature: float = 1.0, known_tokens: jax.Array | None = None,
                  known_mask: jax.Array | None = None):
  """HMAR: scale by scale, each scale in `steps[k]` masked steps (MaskGIT within the scale).

  labels [B] -> (images uint8 [B, H, W, C], tokens [B, L], revealed_at int32 [B, L]: the masked step of its
  scale in which each token was drawn, -1 for given tokens). `steps`: one int per scale (or one for all,
  or "1,1,2,4"), checked by `hmar.check_schedule`; it is free at sampling time (the model was trained on
  random mask ratios). At step s of scale k every masked token is drawn (CFG as VAR: t ramps over the
  scales), and the draws with the highest confidence, log p(draw) + Gumbel noise x choice_temperature x
  (1 - (s + 1) / steps[k]), are kept: as many as leave `hmar.masked_after` tokens masked; the last step
  keeps all. Each step is one `HMAR.step` over the scale's own pn^2 positions (no cache across scales).
  Zero-shot inpainting: `known_tokens` [B, L] where `known_mask` [B, L] is True start revealed (kept as
  given, never redrawn); the schedule then spreads each scale's remaining tokens over its steps.
  """
  cfg = hmar.cfg
  schedule = hmar_lib.check_schedule(steps, cfg.scales)
  if (known_tokens is None) != (known_mask is None):
    raise ValueError("generate_hmar: pass both known_tokens and known_mask (inpainting), or neither.")
  if known_mask is not None and (known_mask.shape != (labels.shape[0], cfg.seq_len)
                                 or known_tokens.shape != known_mask.shape):
    raise ValueError(f"generate_hmar: known_tokens and known_mask must be [batch, {cfg.seq_len}] (batch "
                     f"{labels.shape[0]}), got {known_tokens.shape} and {known_mask.shape}.")
  batch = labels.shape[0]
  both = with_null_class(labels, cfg.num_classes)
  codebook = vq.apply(vq_params, method=tokenizer_codebook)  # revealed tokens enter as their code vectors
  side = cfg.scales[-1]
  f_hat = jnp.zeros((batch, side, side, cfg.z_channels), jnp.float32)
  x_k, tokens, revealed = None, [], []
  for k, pn in enumerate(cfg.scales):
    span = cfg.scale_slice(k)
    if known_mask is None:
      given = jnp.zeros((batch, pn * pn), bool)
      tok = jnp.full((batch, pn * pn), hmar.mask_id, jnp.int32)
    else:
      given = known_mask[:, span].astype(bool)
      tok = jnp.where(given, known_tokens[:, span].astype(jnp.int32), hmar.mask_id)
    at = jnp.where(given, -1, schedule[k]).astype(jnp.int32)
    stay_masked = hmar_lib.masked_after(jnp.sum(~given, axis=1).astype(jnp.int32), schedule[k], xp=jnp)  # [B, S]
    guidance = cfg_ramp(cfg_scale, k, len(cfg.scales))

    def masked_step(s, carry, k=k, x_k=x_k, stay_masked=stay_masked, guidance=guidance):
      # One compiled body per scale (a fori_loop over its steps): XLA reuses its buffers step after step.
      tok, at = carry
      steps_k = schedule[k]
      key_draw, key_conf = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, k), s))
      logits = hmar.apply(hmar_params, both, x_k, k, jnp.concatenate([tok, tok]), codebook, method=HMAR.step)
      logits = guided_logits(logits, guidance)  # [B, pn^2, V]
      draw = sample(logits, key_draw, sampling)
      masked = tok == hmar.mask_id
      if steps_k == 1:
        return jnp.where(masked, draw, tok), jnp.where(masked, s, at)
      scored = logits if sampling.greedy else filtered_logits(logits, sampling)
      conf = jnp.take_along_axis(jax.nn.log_softmax(scored, axis=-1), draw[..., None], axis=-1)[..., 0]
      if choice_temperature > 0:
        noise = choice_temperature * (1.0 - (s + 1) / steps_k)
        conf = conf + noise * jax.random.gumbel(key_conf, conf.shape)
      conf = jnp.where(masked, conf, -jnp.inf)
      rank = jnp.argsort(jnp.argsort(-conf, axis=1), axis=1)
      n_keep = jnp.sum(masked, axis=1) - jax.lax.dynamic_index_in_dim(stay_masked, s, 1, keepdims=False)  # [B]
      keep = masked & ((rank < n_keep[:, None]) | (s == steps_k - 1))  # the last step keeps every draw
      return jnp.where(keep, draw, tok), jnp.where(keep, s, at)

    tok, at = jax.lax.fori_loop(0, schedule[k], masked_step, (tok, at))
    tokens.append(tok)
    revealed.append(at)
    f_hat, nxt = vq.apply(vq_params, f_hat, tok.reshape(batch, pn, pn), k, method=MultiScaleVQVAE.next_input)
    if nxt is not None:
      x_k = jnp.concatenate([nxt, nxt], axis=0)  # both CFG halves continue from the guided sample
  images = vq.apply(vq_params, f_hat, method=MultiScaleVQVAE.fhat_to_images)
  return images, jnp.concatenate(tokens, axis=1), jnp.concatenate(revealed, axis=1)


def inpainting_mask(scales, region: np.ndarray) -> np.ndarray:
  """Pixel region [H, W] bool (True = to generate) -> [L] bool, True = known token: the token of a scale's
  pn x pn map is known unless its cell overlaps the region."""
  region = np.asarray(region, bool)
  size = region.shape[0]
  known = []
  for pn in scales:
    cell = np.zeros((pn, pn), bool)
    for i in range(pn):
      for j in range(pn):
        rows = slice(i * size // pn, -(-(i + 1) * size // pn))
        cols = slice(j * size // pn, -(-(j + 1) * size // pn))
        cell[i, j] = not region[rows, cols].any()
    known.append(cell.reshape(-1))
  return np.concatenate(known)


@loop_jit(static_argnames=("model", "num_tokens", "cfg_scale", "sampling"))
def generate_raster_ar(model: DecoderLM, params, labels: jax.Array, rng: jax.Array, *, num_tokens: int,
                       cfg_scale: float = 0.0, sampling: SamplingConfig = SamplingConfig()) -> jax.Array:
  """`num_tokens` sequential cached steps of a class-conditioned `DecoderLM` (a fori_loop: one compiled
  step), the class token first. labels [B] -> tokens [B, num_tokens]."""
  cfg = model.cfg
  if cfg.num_classes < 2:
    raise ValueError(f"The raster AR conditions on class tokens (the last one the null class); this model has "
                     f"num_classes={cfg.num_classes}.")
  batch = labels.shape[0]
  guided = cfg_scale > 0
  both = with_null_class(labels, cfg.num_classes - 1) if guided else labels
  caches = layers.empty_caches(cfg.decoder, both.shape[0], num_tokens, cfg.jnp_dtype)

  def body(t, carry):
    tokens, prev, caches = carry
    token_in = jnp.where(t == 0, cfg.class_token(both), prev)[:, None]  # [2B or B, 1]
    logits, caches = model.apply(params, token_in, caches=caches)  # positions: the caches' length, t
    logits = logits[:, 0]
    if guided:
      logits = guided_logits(logits, cfg_scale)
    tok = sample(logits, jax.random.fold_in(rng, t), sampling)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, t, 1)
    prev = jnp.concatenate([tok, tok]) if guided else tok
    return tokens, prev, caches

  init = (jnp.zeros((batch, num_tokens), jnp.int32), jnp.zeros((both.shape[0],), jnp.int32), caches)
  return jax.lax.fori_loop(0, num_tokens, body, init)[0]


@loop_jit(static_argnames=("model", "sampling"))
def generate_axial(model: AxialTransformer, params, labels: jax.Array, rng: jax.Array, *,
                   sampling: SamplingConfig = SamplingConfig()) -> jax.Array:
  """Semi-parallel sampling, row by row. labels [B] -> uint8 images [B, H, W, 1]."""
  size = model.cfg.image_size
  batch = labels.shape[0]

  def row_step(i, pixels):
    u_i = jax.lax.dynamic_index_in_dim(model.apply(params, pixels, labels, method=AxialTransformer.context), i, 1)

    def pixel_step(j, row):  # row [B, 1, W]
      logits = model.apply(params, row, u_i, labels, i[None], method=AxialTransformer.inner_logits)
      logit_j = jax.lax.dynamic_index_in_dim(logits[:, 0], j, 1, keepdims=False)  # [B, levels]
      value = sample(logit_j, jax.random.fold_in(jax.random.fold_in(rng, i), j), sampling)
      return jax.lax.dynamic_update_index_in_dim(row, value[:, None], j, 2)

    row = jax.lax.fori_loop(0, size, pixel_step, jnp.zeros((batch, 1, size), jnp.int32))
    return jax.lax.dynamic_update_index_in_dim(pixels, row[:, 0], i, 1)

  pixels = jax.lax.fori_loop(0, size, row_step, jnp.zeros((batch, size, size), jnp.int32))
  return pixels.astype(jnp.uint8)[..., None]


# ---------------------------------------------------------------------------------------------------
# Sample grids


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
  """A grayscale uint8 [H, W] image as PNG, each pixel an upscale x upscale block. The path goes through
  etils.epath, so grids land in a gs:// workdir too."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # only sampling needs it, and it is slow to import
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    plt.imsave(f, np.kron(image, np.ones((upscale, upscale), np.uint8)), cmap="gray", vmin=0, vmax=255, format="png")
