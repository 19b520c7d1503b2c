"""Byte-level language-modelling tasks: HAT and the byte baseline, on the same packed batches.

Both tasks read `config.data` (corpus, packing) identically, so a HAT and a byte baseline trained with
the same data config and seed see exactly the same bytes in the same order.

Documents come from `config.data.corpus` (`hat_jax.data.documents`): a corpus held in memory is packed
by `pipeline`, a "tfds:<name>" corpus is read and packed as a stream by `streaming`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax import losses
from hat_jax.data import documents, pipeline, streaming
from hat_jax.data.batching import stack_rows
from hat_jax.data.splitter import EOD, VOCAB_SIZE, WordSplitter
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.hat import HATConfig, build_hat
from hat_jax.train import flops
from hat_jax.train.task import Task


class ByteLMTask(Task):
  """Shared data handling for tasks trained on packed byte/word rows (in memory, or streamed for TFDS)."""

  unit = "bytes"

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.splitter = WordSplitter(d.split_rule, d.max_word_bytes, d.get("special_tokens"))
    self.bos = bool(d.get("bos", True))  # `[BOS] doc [EOD]` or `doc [EOD]` (configs/hat.py: data_config)
    if d.seq_bytes < d.max_word_bytes:
      raise ValueError(f"data.seq_bytes ({d.seq_bytes}) must be >= data.max_word_bytes ({d.max_word_bytes}).")

  @property
  def _streaming(self) -> bool:
    return documents.is_tfds(self.config.data.corpus)

  @functools.cached_property
  def _cache_dir(self) -> str | None:
    if self.config.data.corpus == "toy":
      return None
    from hat_jax.data import fetch

    return str(fetch.resolve_cache_dir(self.config.data.cache_dir or None))

  @functools.lru_cache(maxsize=2)
  def rows(self, split: str) -> pipeline.PackedRows:
    d = self.config.data
    stream = pipeline.cached_stream(documents.load_documents(d, split), self.splitter, self._cache_dir,
                                    f"{d.corpus}-{split}", bos=self.bos)
    return pipeline.PackedRows(stream, d.seq_bytes, d.seq_words)

  def train_iterator(self, seed, process_index=0, process_count=1):
    d, batch_size = self.config.data, self.config.train.batch_size
    if self._streaming:
      return streaming.train_iterator(documents.load_documents(d, "train"), self.splitter, d.seq_bytes, d.seq_words,
                                      batch_size, seed, process_index, process_count, bos=self.bos)
    return pipeline.train_iterator(self.rows("train"), batch_size, seed, process_index, process_count)

  @functools.lru_cache(maxsize=1)
  def eval_batches(self):
    d = self.config.data
    if self._streaming:
      return streaming.eval_batches(documents.load_documents(d, "validation"), self.splitter, d.seq_bytes, d.seq_words,
                                    d.eval_batch_size, d.eval_batches, bos=self.bos)
    return pipeline.eval_batches(self.rows("validation"), d.eval_batch_size, d.eval_batches)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in self.dummy_batch().items()}

  def dummy_batch(self) -> dict[str, np.ndarray]:
    row = pipeline.make_row(pipeline.encode_documents([b"hello world"], self.splitter),
                            np.array([0, 1, 6, 12, 13]), 0, 4, self.config.data.seq_bytes, self.config.data.seq_words)
    return stack_rows([row])

  def throughput_counts(self, batch) -> dict[str, float]:
    """Bytes and words per batch (real ones, padding excluded) for bytes/s and words/s."""
    return {"bytes": float(self.units_per_batch(batch)),
            "words": float((np.asarray(batch["word_lengths"]) > 0).sum())}

  def units_per_batch(self, batch) -> int:
    return int((np.asarray(batch["segment_ids"]) > 0).sum())

  def sampling_config(self) -> SamplingConfig:
    return SamplingConfig.from_config(self.config.sample)

  @staticmethod
  def _next_byte_log_probs(logits: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
    """Models with next-byte logits: logits[t] predicts bytes[t + 1] (= targets[t]) where loss_mask[t], so
    the log-probability of bytes[t] sits at t - 1. logits [B, S, 256] -> ([B, S], zeros [B, W])."""
    lp_next = -losses.token_nll(logits, batch["targets"])  # [B, S]: log p(bytes[t + 1])
    lp_next = jnp.where(batch["loss_mask"] > 0, lp_next, 0.0)
    byte_lp = jnp.concatenate([jnp.zeros_like(lp_next[:, :1]), lp_next[:, :-1]], axis=1)
    return byte_lp, jnp.zeros(batch["word_lengths"].shape, jnp.float32)


  def _rows_and_bytes(self, batch) -> tuple[int, int]:
    b, s = flops.batch_shape(batch, "bytes", (self.config.train.batch_size, self.config.data.seq_bytes))[:2]
    return b, s

  def run_positions(self) -> dict[str, float]:
    """Positions a whole training run computes on, padding included (compute is spent on it):
    bytes = steps x batch x seq_bytes (HAT adds its word slots)."""
    return {"bytes": float(self._run_rows() * int(self.config.data.seq_bytes))}

  def _run_rows(self) -> int:
    return int(self.config.train.steps) * int(self.config.train.batch_size)


class HATTask(ByteLMTask):

  def __init__(self, config):
    super().__init__(config)
    self.model_cfg = HATConfig.from_config(config.model, config.data.max_word_bytes)
    self.model = build_hat(self.model_cfg)

  def init_params(self, rng):
    return self.model.init(rng, self.dummy_batch(), method=self.model.loss_and_metrics)

  def loss(self, params, batch, rng):
    del rng  # no dropout
    return self.model.apply(params, batch, method=self.model.loss_and_metrics)

  def byte_log_probs(self, params, batch):
    """tfree: next-byte logits (see `ByteLMTask._next_byte_log_probs`). paper: per-word predictions of
    `c_1..c_n, [W]`; byte c_i of word j goes to its slot in the row, and log p([W] | word j) to word_end_lp[j]
    (`Task.byte_log_probs`)."""
    if self.model_cfg.variant != "paper":
      return self._next_byte_log_probs(self.model.apply(params, batch), batch)
    logits, targets, mask = self.model.apply(params, batch)  # [B, W, M+1, 256], [B, W, M+1], [B, W, M+1]
    lp = jnp.where(mask, -losses.token_nll(logits, targets), 0.0)  # [B, W, M+1]
    lengths = batch["word_lengths"]  # [B, W]
    word_end_lp = jnp.take_along_axis(lp, lengths[..., None], axis=2)[..., 0]  # the [W] slot of each word
    m = self.model_cfg.max_word_bytes
    slot = jnp.arange(m)
    num_bytes = batch["bytes"].shape[1]
    # Byte i of word j lives at row slot word_starts[j] + i; slots past a word's end are sent out of range.
    at = jnp.where(slot < lengths[..., None], batch["word_starts"][..., None] + slot, num_bytes)  # [B, W, M]
    byte_lp = jax.vmap(lambda at, v: jnp.zeros(num_bytes, jnp.float32).at[at.reshape(-1)].add(
        v.reshape(-1), mode="drop"))(at, lp[..., :m])  # [B, S]; words do not overlap, so each slot gets one value
    return byte_lp, word_end_lp

  def training_flops(self, batch=None, *, attention: str = "causal"):
    b, s = self._rows_and_bytes(batch)
    w = flops.batch_shape(batch, "word_lengths", (b, self.config.data.seq_words))[1]
    row = flops.hat_forward_flops(self.config.model, s, w, max_word_bytes=self.config.data.max_word_bytes,
                                  attention=attention)
    return flops.per_step(row, b)

  def run_positions(self) -> dict[str, float]:
    return {**super().run_positions(), "words": float(self._run_rows() * int(self.config.data.seq_words))}

  def six_nd_flops(self, params) -> float:
    """Byte-level params (encoder, pooling, guides, decoder, head) run per byte, the backbone per word."""
    pos = self.run_positions()
    return 6.0 * (params["params_byte_level"] * pos["bytes"] + params["params_backbone"] * pos["words"])

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """The samplers' device steps (`hat_jax.generate.hat_sampler`), with caches of one training row.

    tfree: "byte" = the new byte through the cached encoder and decoder; "word" = pool a finished word
    from the byte history and take one backbone step. paper: "word" = encode a finished word and take one
    backbone step; "decode_word" = the per-word decoder over one word (no cache: words are short).
    """
    from hat_jax.models.hat import HAT, PaperHAT, empty_caches
    from hat_jax.models.layers import empty_caches as stack_caches

    cfg, d, model = self.model_cfg, self.config.data, self.model
    b, m, dt = batch_size, cfg.max_word_bytes, cfg.jnp_dtype
    enc_d, bb_d = cfg.encoder.d_model, cfg.backbone.d_model
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    floats = lambda *shape: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    if cfg.variant == "paper":
      caches = jax.eval_shape(lambda: stack_caches(cfg.backbone, b, d.seq_words, dt))

      def word(params, ids, mask, word_pos, valid, caches):
        emb = model.apply(params, ids, mask, method=PaperHAT.encode_words)
        return model.apply(params, emb, word_pos, valid, caches, method=PaperHAT.backbone)

      def decode_word(params, prev, ids):
        return model.apply(params, prev, ids, method=PaperHAT.decode_words)

      mask = jax.ShapeDtypeStruct((b, 1, m), jnp.bool_)
      return {"word": (word, (ints(b, 1, m), mask, ints(b, 1), ints(b, 1), caches)),
              "decode_word": (decode_word, (floats(b, 1, bb_d), ints(b, 1, m)))}
    caches = jax.eval_shape(lambda: empty_caches(cfg, b, d.seq_bytes, d.seq_words))

    def byte(params, new, pos, seg, guide, enc_caches, dec_caches):
      h, enc_caches = model.apply(params, new, pos, seg, enc_caches, method=HAT.encode)
      logits, dec_caches = model.apply(params, h, guide, pos, seg, dec_caches, method=HAT.decode)
      return logits, enc_caches, dec_caches

    def word(params, h_hist, starts, lengths, word_pos, valid, caches):
      byte_pos = jnp.broadcast_to(jnp.arange(h_hist.shape[1]), h_hist.shape[:2])  # as in HATSampler
      emb = model.apply(params, h_hist, starts, lengths, byte_pos, word_pos, method=HAT.pool_words)
      return model.apply(params, emb, word_pos, valid, caches, method=HAT.backbone)

    return {"byte": (byte, (ints(b, 1), ints(b, 1), ints(b, 1), floats(b, 1, bb_d), caches["encoder"],
                            caches["decoder"])),
            "word": (word, (floats(b, d.seq_bytes, enc_d), ints(b, 1), ints(b, 1), ints(b, 1), ints(b, 1),
                            caches["backbone"]))}

  def generate(self, params, rng) -> str:
    """`config.sample.engine`: "device" (default; `hat_jax.generate.hat_engine`, the byte loop on the device)
    or "host" (`hat_jax.generate.hat_sampler`, a Python loop per byte); both give the same samples."""
    from hat_jax.generate.hat_engine import HATEngine, PaperHATEngine
    from hat_jax.generate.hat_sampler import HATSampler, PaperHATSampler

    s = self.config.sample
    engine = s.get("engine", "device")
    if engine not in ("device", "host"):
      raise ValueError(f"config.sample.engine must be 'device' or 'host', got {engine!r}.")
    prompt = s.prompt.encode()
    if self.model_cfg.variant == "paper":
      cls = PaperHATEngine if engine == "device" else PaperHATSampler
      sampler = cls(self.model_cfg, params, self.splitter, max_total_words=len(prompt) + s.max_new_bytes + 2,
                    bos=self.bos)
    else:
      cls = HATEngine if engine == "device" else HATSampler
      sampler = cls(self.model_cfg, params, self.splitter, max_total_bytes=len(prompt) + s.max_new_bytes + 1,
                    bos=self.bos)
    gens = sampler.generate([prompt] * s.num_samples, s.max_new_bytes, rng, self.sampling_config())
    return "\n---\n".join(s.prompt + g.text for g in gens)


class BytesTask(ByteLMTask):
  """The byte baseline: a `DecoderLM` over bytes, on HAT's packed rows and with HAT's byte metrics."""

  def __init__(self, config):
    super().__init__(config)
    self.model_cfg = DecoderLMConfig.from_config(config.model)
    if self.model_cfg.vocab_size != VOCAB_SIZE:
      raise ValueError(f"The byte baseline predicts bytes: model.vocab_size must be {VOCAB_SIZE}, got "
                       f"{self.model_cfg.vocab_size}.")
    self.model = DecoderLM(self.model_cfg)

  def _logits(self, params, batch):
    return self.model.apply(params, batch["bytes"], positions=batch["positions"],
                            segment_ids=batch["segment_ids"])[0]

  def init_params(self, rng):
    batch = self.dummy_batch()
    return self.model.init(rng, batch["bytes"], positions=batch["positions"], segment_ids=batch["segment_ids"])

  def loss(self, params, batch, rng):
    del rng
    return losses.next_byte_metrics(self._logits(params, batch), batch)

  def byte_log_probs(self, params, batch):
    return self._next_byte_log_probs(self._logits(params, batch), batch)

  def training_flops(self, batch=None, *, attention: str = "causal"):
    b, s = self._rows_and_bytes(batch)
    return flops.per_step(flops.decoder_lm_forward_flops(self.config.model, s, attention=attention), b)

  def six_nd_flops(self, params) -> float:
    return 6.0 * params["params_non_embedding"] * self.run_positions()["bytes"]

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    from hat_jax.generate.block_engine import decoder_lm_steps

    return decoder_lm_steps(self.model_cfg, batch_size, int(self.config.data.seq_bytes))

  def generate(self, params, rng) -> str:
    """`num_samples` continuations of BOS + prompt (the prompt alone with data.bos=False), each up to
    `max_new_bytes` or its EOD."""
    from hat_jax.generate.block_engine import continue_prompts

    s = self.config.sample
    start = pipeline.document_start(s.prompt.encode(), self.bos)
    outs = continue_prompts(self.model_cfg, params, [start] * s.num_samples, rng,
                            num_new=int(s.max_new_bytes), sampling=self.sampling_config(), eos_id=EOD)
    return "\n---\n".join(s.prompt + bytes(o.astype(np.uint8)).decode("utf-8", errors="replace") for o in outs)


TASKS = {"hat": HATTask, "bytes": BytesTask}
