"""Byte-level language-modelling tasks: HAT and the byte baseline, on the same packed batches.

Both tasks read `config.data` (corpus, packing) identically, so a HAT and a byte baseline trained with
the same data config and seed see exactly the same bytes in the same order.

`config.data.corpus` is "toy" (built in), a prepared corpus of `hat_jax.data.corpora` (packed in
memory by `pipeline`), or "tfds:<name>" (e.g. "tfds:wiki40b/en", "tfds:c4/en:3.1.0"): an ArrayRecord
TFDS dataset under `data.tfds_data_dir`, read and packed as a stream by `streaming` (splits
`data.tfds_train_split` / `data.tfds_eval_split`, text feature `data.text_key`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.data import pipeline, streaming
from hat_jax.data.splitter import WordSplitter
from hat_jax.generate.sampling import SamplingConfig
from hat_jax.models.bytes_lm import BytesLM, BytesLMConfig
from hat_jax.models.hat import HATConfig, build_hat
from hat_jax.train.task import Task

# A tiny built-in corpus so tests and smoke runs need no prepared data ("toy"). Real runs use
# `hat_jax.data.corpora` ("english", "german", ...), prepared by `python -m hat_jax.data prepare`.
_TOY_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with a single step.",
    "She sells sea shells by the sea shore.", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "All that glitters is not gold; all who wander are not lost.", "To be, or not to be: that is the question.",
    "It was the best of times, it was the worst of times.", "Call me Ishmael. Some years ago, never mind how long.",
)


def toy_documents(split: str, num_docs: int = 64) -> list[bytes]:
  rng = np.random.default_rng(0 if split == "train" else 1)
  docs = []
  for _ in range(num_docs):
    picks = rng.integers(0, len(_TOY_SENTENCES), size=rng.integers(2, 8))
    docs.append(" ".join(_TOY_SENTENCES[i] for i in picks).encode())
  return docs


TFDS_PREFIX = "tfds:"


def load_documents(data_cfg, split: str) -> Sequence[bytes]:
  """Documents of `split` ("train" or "validation"); random access, and lazy for TFDS corpora."""
  corpus = data_cfg.corpus
  if corpus == "toy":
    return toy_documents(split)
  if corpus.startswith(TFDS_PREFIX):
    from hat_jax.data import tfds_source  # imported lazily: tensorflow_datasets is a heavy, optional import

    name = corpus[len(TFDS_PREFIX):]
    if not name:
      raise ValueError(f"data.corpus={corpus!r} names no dataset; expected e.g. 'tfds:wiki40b/en' or "
                       "'tfds:c4/en:3.1.0'.")
    tfds_split = data_cfg.tfds_train_split if split == "train" else data_cfg.tfds_eval_split
    return tfds_source.tfds_documents(name, tfds_split, data_cfg.tfds_data_dir or None, data_cfg.text_key)
  from hat_jax.data import corpora  # imported lazily: only real corpora need it

  if corpus not in corpora.CORPORA:
    raise ValueError(f"Unknown data.corpus {corpus!r}; expected 'toy', one of {', '.join(corpora.CORPORA)} "
                     f"(prepared with `python -m hat_jax.data prepare NAME`), or '{TFDS_PREFIX}<name>' for a "
                     "prepared TFDS dataset (e.g. 'tfds:wiki40b/en').")
  return corpora.load_corpus(corpus, split, cache_dir=data_cfg.cache_dir or None)


class ByteLMTask(Task):
  """Shared data handling for tasks trained on packed byte/word rows (in memory, or streamed for TFDS)."""

  unit = "bytes"

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.splitter = WordSplitter(d.split_rule, d.max_word_bytes)
    if d.seq_bytes < d.max_word_bytes:
      raise ValueError(f"data.seq_bytes ({d.seq_bytes}) must be >= data.max_word_bytes ({d.max_word_bytes}).")

  @property
  def _streaming(self) -> bool:
    return self.config.data.corpus.startswith(TFDS_PREFIX)

  @functools.cached_property
  def _cache_dir(self) -> str | None:
    if self.config.data.corpus == "toy":
      return None
    from hat_jax.data import fetch

    return str(fetch.resolve_cache_dir(self.config.data.cache_dir or None))

  @functools.lru_cache(maxsize=2)
  def rows(self, split: str) -> pipeline.PackedRows:
    d = self.config.data
    stream = pipeline.cached_stream(load_documents(d, split), self.splitter, self._cache_dir, f"{d.corpus}-{split}")
    return pipeline.PackedRows(stream, d.seq_bytes, d.seq_words)

  def train_iterator(self, seed, process_index=0, process_count=1):
    d, batch_size = self.config.data, self.config.train.batch_size
    if self._streaming:
      return streaming.train_iterator(load_documents(d, "train"), self.splitter, d.seq_bytes, d.seq_words,
                                      batch_size, seed, process_index, process_count)
    return pipeline.train_iterator(self.rows("train"), batch_size, seed, process_index, process_count)

  @functools.lru_cache(maxsize=1)
  def eval_batches(self):
    d = self.config.data
    if self._streaming:
      return streaming.eval_batches(load_documents(d, "validation"), self.splitter, d.seq_bytes, d.seq_words,
                                    d.eval_batch_size, d.eval_batches)
    return pipeline.eval_batches(self.rows("validation"), d.eval_batch_size, d.eval_batches)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in self.dummy_batch().items()}

  def dummy_batch(self) -> dict[str, np.ndarray]:
    row = pipeline.make_row(pipeline.encode_documents([b"hello world"], self.splitter),
                            np.array([0, 1, 6, 12, 13]), 0, 4, self.config.data.seq_bytes, self.config.data.seq_words)
    return {k: np.stack([v]) for k, v in row.items()}

  def throughput_counts(self, batch) -> dict[str, float]:
    """Bytes and words per batch (real ones, padding excluded) for bytes/s and words/s."""
    return {"bytes": float(self.units_per_batch(batch)),
            "words": float((np.asarray(batch["word_lengths"]) > 0).sum())}

  def units_per_batch(self, batch) -> int:
    return int((np.asarray(batch["segment_ids"]) > 0).sum())

  def sampling_config(self) -> SamplingConfig:
    s = self.config.sample
    return SamplingConfig(temperature=float(s.temperature), top_k=int(s.top_k) or None, top_p=None)


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
      emb = model.apply(params, h_hist, starts, lengths, method=HAT.pool_words)
      return model.apply(params, emb, word_pos, valid, caches, method=HAT.backbone)

    return {"byte": (byte, (ints(b, 1), ints(b, 1), ints(b, 1), floats(b, 1, bb_d), caches["encoder"],
                            caches["decoder"])),
            "word": (word, (floats(b, d.seq_bytes, enc_d), ints(b, 1), ints(b, 1), ints(b, 1), ints(b, 1),
                            caches["backbone"]))}

  def sample(self, params, rng) -> str:
    from hat_jax.generate.hat_sampler import HATSampler, PaperHATSampler

    s = self.config.sample
    prompt = s.prompt.encode()
    if self.model_cfg.variant == "paper":
      sampler = PaperHATSampler(self.model_cfg, params, self.splitter,
                                max_total_words=len(prompt) + s.max_new_bytes + 2)
    else:
      sampler = HATSampler(self.model_cfg, params, self.splitter, max_total_bytes=len(prompt) + s.max_new_bytes + 1)
    gens = sampler.generate([prompt] * s.num_samples, s.max_new_bytes, rng, self.sampling_config())
    return "\n---\n".join(s.prompt + g.text for g in gens)


class BytesTask(ByteLMTask):

  def __init__(self, config):
    super().__init__(config)
    self.model_cfg = BytesLMConfig.from_config(config.model)
    self.model = BytesLM(self.model_cfg)

  def init_params(self, rng):
    return self.model.init(rng, self.dummy_batch(), method=self.model.loss_and_metrics)

  def loss(self, params, batch, rng):
    del rng
    return self.model.apply(params, batch, method=self.model.loss_and_metrics)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """"byte": one byte through the cached stack (`hat_jax.generate.bytes_sampler`)."""
    from hat_jax.models.layers import empty_caches

    stack, model, b = self.model_cfg.stack, self.model, batch_size
    caches = jax.eval_shape(lambda: empty_caches(stack, b, self.config.data.seq_bytes, jnp.dtype(self.model_cfg.dtype)))
    ints = jax.ShapeDtypeStruct((b, 1), jnp.int32)
    return {"byte": (lambda params, ids, pos, seg, caches: model.apply(params, ids, pos, seg, caches),
                     (ints, ints, ints, caches))}

  def sample(self, params, rng) -> str:
    from hat_jax.generate.bytes_sampler import generate_bytes

    s = self.config.sample
    prompt = s.prompt.encode()
    outs = generate_bytes(self.model, params, [prompt] * s.num_samples, s.max_new_bytes, rng,
                          self.sampling_config())
    return "\n---\n".join(s.prompt + o.decode("utf-8", errors="replace") for o in outs)


TASKS = {"hat": HATTask, "bytes": BytesTask}
