"""Image tasks (`config.task` names in TASKS): the multi-scale VQ tokenizer, VAR, HMAR, the Axial
Transformer and the raster-order AR baseline, on MNIST (or synthetic images for tests and smoke runs).

Each task builds its model, reads its data from `hat_jax.data.images` (images, batches, tokens), computes
its loss and samples through `hat_jax.generate.images`.

VAR, HMAR and the raster AR over VQ tokens read a trained tokenizer: the params of the latest checkpoint of the
VQVAE run in `config.tokenizer.workdir` (the `--workdir` of configs/vqvae.py), restored with the same
orbax Checkpointer that wrote them. That run's saved config must have the model of `config.tokenizer.model`
(checked on loading; aot compiling and the FLOP formulas read the shapes from there, without files). No
such run is an error naming the command that trains it (`config.tokenizer.train_config`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from hat_jax import losses
from hat_jax.data import images as image_data
from hat_jax.data.iterators import Batch
from hat_jax.generate import images as image_gen
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models import hmar as hmar_lib
from hat_jax.models.axial import AxialConfig, AxialTransformer
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.hmar import HMAR
from hat_jax.models.layers import StackConfig
from hat_jax.models.var import VAR, VARConfig
from hat_jax.models.vqvae import MultiScaleVQVAE, VQConfig, reconstruction_metrics, to_unit_range
from hat_jax.train.checkpoint import CheckpointCorruptError, Checkpointer
from hat_jax.train import flops
from hat_jax.train.task import Metrics, Task


class _ImageTask(Task):
  """Shared data plumbing: `features(split)` -> dict of per-example arrays ("labels" + model inputs)."""

  unit = "images"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self._cache: dict[str, dict[str, np.ndarray]] = {}

  def features(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._cache:
      images, labels = image_data.load_images(self.config.data, split)
      self._cache[split] = self.make_features(images, labels)
    return self._cache[split]

  def make_features(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {"images": images, "labels": labels}

  def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1):
    batch = int(self.config.train.batch_size)
    if batch % process_count:
      raise ValueError(f"config.train.batch_size ({batch}) must divide over {process_count} processes.")
    return image_data.ArrayBatches(self.features("train"), batch // process_count, seed,
                                   (process_index, process_count),
                                   drop_rate=float(self.config.model.get("cond_drop", 0.0)))

  def eval_batches(self) -> Iterable[Batch]:
    return image_data.whole_batches(self.features("test"), int(self.config.data.eval_batch_size))

  def units_per_batch(self, batch: Batch) -> int:
    return int(len(batch["labels"]))

  def sample_labels(self) -> jax.Array:
    per_class = int(self.config.sample.per_class)
    return jnp.tile(jnp.arange(image_data.NUM_CLASSES, dtype=jnp.int32), per_class)

  def sampling(self) -> SamplingConfig:
    return SamplingConfig.from_config(self.config.sample)

  def write_grid(self, images, name: str) -> str:
    path = os.path.join(self.config.sample.output_dir, name)
    image_gen.write_png(path, image_gen.image_grid(np.asarray(images), rows=int(self.config.sample.per_class)))
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

  def generate(self, params, rng) -> str:
    """A grid of test images over their reconstructions. (VAR and the raster AR read the tokenizer from
    this run's checkpoints; nothing is exported.)"""
    del rng
    images = self.features("test")["images"][:8 * int(self.config.sample.per_class)]
    recon = self.model.apply(params, self.model.apply(params, images, method=MultiScaleVQVAE.encode),
                             method=MultiScaleVQVAE.decode)
    grid = self.write_grid(np.concatenate([images[..., None], np.asarray(recon)]), "vqvae_reconstructions.png")
    return f"wrote {grid}"


class _TokenizedTask(_ImageTask):
  """Tasks over the frozen tokenizer's multi-scale tokens: features are tokens [N, L] + labels."""

  def __init__(self, config):
    super().__init__(config)
    self.vq_cfg = VQConfig.from_config(config.tokenizer.model)
    self.vq = MultiScaleVQVAE(self.vq_cfg)
    self._vq_params = None

  def _vq_shapes(self):
    c = self.vq_cfg
    images = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.uint8)
    # Shapes only: no sharding constraint (unboxing applies one when a mesh is in context, e.g. in evaluate).
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
                        jax.eval_shape(lambda: self.vq.init(jax.random.key(0), images)),
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))

  @property
  def vq_params(self):
    if self._vq_params is None:
      self._vq_params = self._restore_tokenizer()
    return self._vq_params

  def _restore_tokenizer(self):
    """The latest params of the VQVAE run in config.tokenizer.workdir (host numpy arrays)."""
    tok = self.config.tokenizer
    directory = os.path.join(tok.workdir, "checkpoints")  # the trainer's layout: <workdir>/checkpoints
    train = (f"python -m hat_jax.main --config={tok.train_config} --workdir={tok.workdir} --mode=train_and_sample "
             f"(or set config.tokenizer.workdir to the --workdir of a trained tokenizer run)")
    # Checked before opening: a Checkpointer creates its directory, which would leave an empty run behind.
    if not epath.Path(directory).exists():
      raise FileNotFoundError(f"No tokenizer run in {tok.workdir} (config.tokenizer.workdir): {directory} does not "
                              f"exist. Train the tokenizer first: {train}.")
    with Checkpointer(directory, keep=None) as ckpt:
      step = ckpt.latest_step()
      if step is None:
        raise FileNotFoundError(f"The tokenizer run in {tok.workdir} (config.tokenizer.workdir) has no checkpoint "
                                f"yet. Train the tokenizer first: {train}.")
      stored = ckpt.restore_config(step)
      if stored.get("task") != "vqvae":
        raise ValueError(f"config.tokenizer.workdir={tok.workdir} is a {stored.get('task')!r} run, not a VQVAE "
                         f"tokenizer run. Point it at the --workdir of {tok.train_config}.")
      stored_cfg = VQConfig.from_config(stored["model"])
      if stored_cfg != self.vq_cfg:
        diff = {k: (getattr(stored_cfg, k), v) for k, v in vars(self.vq_cfg).items() if getattr(stored_cfg, k) != v}
        raise ValueError(f"The tokenizer run in {tok.workdir} has another model than config.tokenizer.model "
                         f"(field: (run, config) = {diff}). Set config.tokenizer.model to the run's model or "
                         f"train the configured tokenizer: {train}.")
      try:
        return ckpt.restore_params(self._vq_shapes(), step)[1]
      except CheckpointCorruptError as e:
        raise CheckpointCorruptError(
            e.step, e.directory, f"{e.problem}. It is the tokenizer of this run (config.tokenizer.workdir="
            f"{tok.workdir}). Restore it from a copy, or rerun the tokenizer's training "
            f"({train}, same --workdir) with --config.train.on_bad_checkpoint=fallback: it resumes from its "
            f"newest verified checkpoint and writes the latest one again.") from e

  def stub_frozen_inputs(self) -> None:
    """Zeros for the tokenizer's params (the loss reads its codebook and phi convs to build VAR's inputs)."""
    self._vq_params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), self._vq_shapes())

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"tokens": jax.ShapeDtypeStruct((batch_size, self.vq_cfg.seq_len), jnp.int32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def make_features(self, images, labels):
    encode = jax.jit(lambda p, x: self.vq.apply(p, x, method=MultiScaleVQVAE.encode))
    return {"tokens": image_data.tokenize_images(encode, self.vq_params, images), "labels": labels}


class VARTask(_TokenizedTask):
  def __init__(self, config):
    super().__init__(config)
    m, c = config.model, self.vq_cfg
    self.var_cfg = VARConfig(StackConfig.from_config(m.stack), scales=c.scales, vocab_size=c.vocab_size,
                             z_channels=c.z_channels, num_classes=image_data.NUM_CLASSES,
                             dtype=m.get("dtype", "float32"))
    self.model = VAR(self.var_cfg, attention_impl=m.attention_impl)

  def init_params(self, rng):
    c = self.var_cfg
    return self.model.init(rng, jnp.zeros((1,), jnp.int32), jnp.zeros((1, c.seq_len - 1, c.z_channels)))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    tokens = jnp.asarray(batch["tokens"])
    x_in = self.vq.apply(self.vq_params, tokens, method=MultiScaleVQVAE.var_inputs)
    logits = self.model.apply(params, jnp.asarray(batch["labels"]), x_in)
    return losses.image_token_metrics(logits, tokens, self.vq_cfg.image_size ** 2 * self.vq_cfg.channels,
                         self.var_cfg.scale_slice(len(self.var_cfg.scales) - 1))

  def training_flops(self, batch=None, *, attention: str = "causal"):
    cfg = self.var_cfg
    b, length = flops.batch_shape(batch, "tokens", (self.config.train.batch_size, cfg.seq_len))[:2]
    if length != cfg.seq_len:
      raise ValueError(f"VAR tokens are [batch, {cfg.seq_len}] for scales {cfg.scales}, got length {length}.")
    return flops.per_step(flops.var_forward_flops(cfg, attention=attention), b)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """"last_scale": the sampler's largest step, the last scale through the cached blocks with the
    classifier-free-guidance batch doubled ([labels; null])."""
    cfg, model, b = self.var_cfg, self.model, 2 * batch_size
    k = len(cfg.scales) - 1
    caches = jax.eval_shape(lambda: model.empty_caches(b))

    def last_scale(params, labels, x_k, caches):
      return model.apply(params, labels, x_k, k, caches, method=VAR.step)

    return {"last_scale": (last_scale, (jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct(
        (b, cfg.scales[k] ** 2, cfg.z_channels), jnp.float32), caches))}

  def generate(self, params, rng) -> str:
    images, _ = image_gen.generate_var(self.model, params, self.vq, self.vq_params, self.sample_labels(), rng,
                                       cfg_scale=float(self.config.sample.cfg_scale), sampling=self.sampling())
    return f"wrote {self.write_grid(images, 'var_samples.png')} (rows: classes 0-9 repeated)"


class HMARTask(VARTask):
  """HMAR (`hat_jax.models.hmar`) on the same tokenizer, data and inputs as VAR.

  Training batches: MaskGIT masks within every scale (`hmar.random_mask`, ratio from `model.full_mask_prob`).
  Eval batches carry `eval_seed` (the test image's index), and the eval loss is the test NLL:
    bits_per_image          all tokens of a scale masked: one step per scale, -log p(r_k | x~_{<k}) summed
                            over the tokens (the exact NLL of the one-step sampler; same unit as VAR's)
    bits_per_image_steps    the exact NLL of the random-order masked sampler with the schedule
                            `sample.steps`: the tokens of scale k revealed in steps[k] groups in a random
                            order (seeded per test image), each group given the earlier ones. The
                            confidence-ordered sampler's order depends on the draws, so its NLL has no
                            closed form; this is the same model under a fixed-order schedule.
  """

  def __init__(self, config):
    super().__init__(config)
    self.model = HMAR(self.var_cfg, attention_impl=config.model.attention_impl)
    self.full_mask_prob = float(config.model.get("full_mask_prob", 0.2))
    if not 0.0 <= self.full_mask_prob <= 1.0:
      raise ValueError(f"config.model.full_mask_prob must be in [0, 1], got {self.full_mask_prob}.")
    self.schedule = hmar_lib.check_schedule(config.sample.get("steps", 1), self.var_cfg.scales)

  def init_params(self, rng):
    c = self.var_cfg
    return self.model.init(rng, jnp.zeros((1,), jnp.int32), jnp.zeros((1, c.seq_len - 1, c.z_channels)),
                           jnp.zeros((1, c.seq_len), jnp.int32), jnp.zeros((c.vocab_size, c.z_channels)))

  @property
  def codebook(self):
    return self.vq.apply(self.vq_params, method=image_gen.tokenizer_codebook)

  def eval_batches(self) -> Iterable[Batch]:
    feats = dict(self.features("test"))
    feats["eval_seed"] = np.arange(len(feats["labels"]), dtype=np.int32)
    return image_data.whole_batches(feats, int(self.config.data.eval_batch_size))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    cfg, mask_id = self.var_cfg, self.var_cfg.vocab_size
    tokens, labels = jnp.asarray(batch["tokens"]), jnp.asarray(batch["labels"])
    x_in = self.vq.apply(self.vq_params, tokens, method=MultiScaleVQVAE.var_inputs)
    apply = lambda token_in: self.model.apply(params, labels, x_in, token_in, self.codebook)  # noqa: E731
    if "eval_seed" not in batch:  # training: random masks within every scale
      masked = hmar_lib.random_mask(rng, cfg, tokens.shape[0], self.full_mask_prob)
      return hmar_lib.masked_loss(apply(jnp.where(masked, mask_id, tokens)), tokens, masked, cfg)
    pixels = self.vq_cfg.image_size ** 2 * self.vq_cfg.channels
    loss, metrics = losses.image_token_metrics(apply(jnp.full_like(tokens, mask_id)), tokens, pixels,
                                               cfg.scale_slice(len(cfg.scales) - 1))
    # Random-order NLL with the schedule: at step s, ranks in [lo, hi) are predicted given ranks < lo.
    seeds = jnp.asarray(batch["eval_seed"])
    rank = jax.vmap(lambda s: hmar_lib.ranks_within_scales(jax.random.fold_in(rng, s), cfg, 1)[0])(seeds)
    lo, hi = hmar_lib.schedule_step_bounds(cfg, self.schedule)
    nll = jnp.zeros(tokens.shape, jnp.float32)
    for s in range(lo.shape[0]):
      step_nll = losses.token_nll(apply(jnp.where(rank < lo[s], tokens, mask_id)), tokens)
      nll = nll + jnp.where((rank >= lo[s]) & (rank < hi[s]), step_nll, 0.0)
    metrics["bits_per_image_steps"] = jnp.mean(jnp.sum(nll, axis=1)) / losses.LN2
    return loss, metrics

  def training_flops(self, batch=None, *, attention: str = "causal"):
    """VAR's count with HMAR's pairs: block-diagonal over scales, sum_k pn_k^4, under both conventions (the
    "xla" path cuts the static block layout into scales and computes exactly those pairs)."""
    cfg = self.var_cfg
    b, length = flops.batch_shape(batch, "tokens", (self.config.train.batch_size, cfg.seq_len))[:2]
    if length != cfg.seq_len:
      raise ValueError(f"HMAR tokens are [batch, {cfg.seq_len}] for scales {cfg.scales}, got length {length}.")
    row = flops.var_forward_flops(cfg, attention=attention)
    st = cfg.stack
    var_pairs = flops.block_causal_pairs([pn * pn for pn in cfg.scales], attention=attention)
    pairs = hmar_lib.attention_pairs(cfg.scales, 1)
    row["blocks"] += st.num_layers * (pairs - var_pairs) * flops.layer_pair_flops(st)
    row["embed"] += 2.0 * cfg.seq_len * st.d_model  # token / MASK embedding rows added
    return flops.per_step(row, b)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """"last_scale_step": one masked step of the last scale (its pn^2 positions alone, no cache), with the
    classifier-free-guidance batch doubled."""
    cfg, model, b = self.var_cfg, self.model, 2 * batch_size
    k = len(cfg.scales) - 1
    n = cfg.scales[k] ** 2

    def last_scale_step(params, labels, x_k, token_k, codebook):
      return model.apply(params, labels, x_k, k, token_k, codebook, method=HMAR.step)

    return {"last_scale_step": (last_scale_step, (
        jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b, n, cfg.z_channels), jnp.float32),
        jax.ShapeDtypeStruct((b, n), jnp.int32), jax.ShapeDtypeStruct((cfg.vocab_size, cfg.z_channels), jnp.float32)))}

  def generate_images(self, params, labels, rng, **kwargs):
    """`generate_hmar` with this run's tokenizer, schedule and sampling settings (kwargs override them)."""
    s = self.config.sample
    return image_gen.generate_hmar(
        self.model, params, self.vq, self.vq_params, labels, rng, steps=kwargs.pop("steps", self.schedule),
        cfg_scale=float(s.cfg_scale), sampling=self.sampling(),
        choice_temperature=kwargs.pop("choice_temperature", float(s.get("choice_temperature", 1.0))), **kwargs)

  def inpaint(self, params, rng, region: np.ndarray, count: int):
    """The first `count` test images with `region` [H, W] (True = generate) regenerated under their own
    labels -> (originals uint8 [count, H, W], masked views, inpainted images)."""
    images = image_data.load_images(self.config.data, "test")[0][:count]
    feats = self.features("test")  # tokens of the same images, in the same order
    labels, tokens = jnp.asarray(feats["labels"][:count]), jnp.asarray(feats["tokens"][:count])
    known = jnp.broadcast_to(jnp.asarray(image_gen.inpainting_mask(self.var_cfg.scales, region)), tokens.shape)
    out, _, _ = self.generate_images(params, labels, rng, known_tokens=tokens, known_mask=known)
    shown = np.where(np.asarray(region)[None], 96, images).astype(np.uint8)  # the region in grey
    return images, shown, np.asarray(out)[..., 0]

  def generate(self, params, rng) -> str:
    images, _, _ = self.generate_images(params, self.sample_labels(), rng)
    grid = self.write_grid(images, "hmar_samples.png")
    size = self.vq_cfg.image_size
    region = np.zeros((size, size), bool)
    region[size // 2:] = True  # the lower half is regenerated
    originals, shown, filled = self.inpaint(params, jax.random.fold_in(rng, 1), region, 10)
    rows = np.concatenate([originals, shown, filled])
    path = os.path.join(self.config.sample.output_dir, "hmar_inpainting.png")
    image_gen.write_png(path, image_gen.image_grid(rows, rows=3))
    return (f"wrote {grid} (rows: classes 0-9 repeated; schedule {self.schedule}) and {path} (rows: test images, "
            f"lower half removed, lower half regenerated)")


class RasterARTask(_TokenizedTask):
  """The raster-order baseline: a `DecoderLM` over [class token, t_0, ..., t_{N-2}] predicting t_0 .. t_{N-1}.

  `model.tokens="vq"`: the VAR tokens flattened coarse to fine; `"pixels"`: the raw 16x16 pixels. Its
  class tokens include the null class that classifier-free guidance samples against.
  """

  def __init__(self, config):
    m = config.model
    if m.tokens not in ("vq", "pixels"):
      raise ValueError(f"config.model.tokens must be 'vq' or 'pixels', got {m.tokens!r}.")
    if m.tokens == "vq":
      super().__init__(config)
      self.seq_len, vocab = self.vq_cfg.seq_len, self.vq_cfg.vocab_size
    else:
      _ImageTask.__init__(self, config)
      self.seq_len, vocab = int(config.data.image_size) ** 2, 256
    self.pixels_per_image = int(config.data.image_size) ** 2
    self.ar_cfg = DecoderLMConfig(StackConfig.from_config(m.stack), vocab_size=vocab,
                                  num_classes=image_data.NUM_CLASSES + 1, attention_impl=m.attention_impl)
    self.model = DecoderLM(self.ar_cfg)

  def make_features(self, images, labels):
    if self.config.model.tokens == "vq":
      return super().make_features(images, labels)
    return {"tokens": image_data.pixel_tokens(images), "labels": labels}

  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    tokens, labels = jnp.asarray(batch["tokens"]), jnp.asarray(batch["labels"])
    inputs = jnp.concatenate([self.ar_cfg.class_token(labels)[:, None], tokens[:, :-1]], axis=1)  # [B, N]
    logits, _ = self.model.apply(params, inputs)
    return losses.image_token_metrics(logits, tokens, self.pixels_per_image, slice(-self.seq_len // 2, None))

  def training_flops(self, batch=None, *, attention: str = "causal"):
    b = flops.batch_shape(batch, "tokens", (self.config.train.batch_size, self.seq_len))[0]
    return flops.transformer_lm_flops(self.ar_cfg.decoder, self.seq_len, b, self.ar_cfg.vocab_size,
                                      attention=attention, blocked=self.ar_cfg.mask_by_index)

  def generate(self, params, rng) -> str:
    tokens = image_gen.generate_raster_ar(self.model, params, self.sample_labels(), rng, num_tokens=self.seq_len,
                                          cfg_scale=float(self.config.sample.cfg_scale), sampling=self.sampling())
    if self.config.model.tokens == "vq":
      images = self.vq.apply(self.vq_params, tokens, method=MultiScaleVQVAE.decode)
    else:
      images = image_data.pixel_images(tokens, int(self.config.data.image_size))
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
    bpd = losses.bits_per_dim(logits, images.astype(jnp.int32).reshape(logits.shape[:3]))
    return bpd * losses.LN2, {"bits_per_dim": bpd}

  def generate(self, params, rng) -> str:
    images = image_gen.generate_axial(self.model, params, self.sample_labels(), rng, sampling=self.sampling())
    return f"wrote {self.write_grid(images, 'axial_samples.png')} (rows: classes 0-9 repeated)"


TASKS: dict[str, type[Task]] = {"vqvae": VQVAETask, "var": VARTask, "hmar": HMARTask, "axial": AxialTask,
                                "raster_ar": RasterARTask}
