"""Byte-level language-modelling tasks: HAT and the byte baseline, on the same packed batches.

Both tasks read `config.data` (corpus, packing) identically, so a HAT and a byte baseline trained with
the same data config and seed see exactly the same bytes in the same order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.data import pipeline
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


def load_documents(data_cfg, split: str) -> Sequence[bytes]:
  if data_cfg.corpus == "toy":
    return toy_documents(split)
  from hat_jax.data import corpora  # imported lazily: only real corpora need it

  return corpora.load_corpus(data_cfg.corpus, split, cache_dir=data_cfg.cache_dir or None)


class ByteLMTask(Task):
  """Shared data handling for tasks trained on packed byte/word rows."""

  unit = "bytes"

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.splitter = WordSplitter(d.split_rule, d.max_word_bytes)
    if d.seq_bytes < d.max_word_bytes:
      raise ValueError(f"data.seq_bytes ({d.seq_bytes}) must be >= data.max_word_bytes ({d.max_word_bytes}).")

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
    return pipeline.train_iterator(self.rows("train"), self.config.train.batch_size, seed, process_index,
                                   process_count)

  @functools.lru_cache(maxsize=1)
  def eval_batches(self):
    d = self.config.data
    return pipeline.eval_batches(self.rows("validation"), d.eval_batch_size, d.eval_batches)

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

  def sample(self, params, rng) -> str:
    from hat_jax.generate.bytes_sampler import generate_bytes

    s = self.config.sample
    prompt = s.prompt.encode()
    outs = generate_bytes(self.model, params, [prompt] * s.num_samples, s.max_new_bytes, rng,
                          self.sampling_config())
    return "\n---\n".join(s.prompt + o.decode("utf-8", errors="replace") for o in outs)


TASKS = {"hat": HATTask, "bytes": BytesTask}
