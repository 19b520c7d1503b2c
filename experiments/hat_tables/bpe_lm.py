"""A minimal BPE-token baseline for the compute-matched table: the decoder-only LM of the byte baselines
(`hat_jax.models.decoder_lm.DecoderLM`) over byte-level BPE tokens, trained by the generic trainer
(config.task = "experiments.hat_tables.bpe_lm:BPETask"). This file holds what is BPE-specific: the
tokenizer, the token rows and the bits-per-byte loss.

Tokenizer: HuggingFace `tokenizers` byte-level BPE (GPT-2 pre-tokenisation, min_frequency 2, no
special tokens, as in experiments/compression) trained on the first `bpe_train_bytes` of the English
train split; cached as JSON next to the data cache. Rows: documents are tokenized one by one and
packed into rows of `seq_tokens` tokens (segment ids keep documents apart, as the byte pipeline does).

bits per byte = (summed next-token cross-entropy in nats) / ln 2 / (UTF-8 bytes of the target
tokens). Byte lengths come from the byte-level alphabet (GPT-2's bytes_to_unicode), exact for every
token including partial UTF-8 sequences. Word accuracy is not defined for this model here: tokens do
not align with the HAT splitter's words, so it reports none (the table says n/a).
"""

from __future__ import annotations

import functools
import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from configs import hat as hat_config
from hat_jax import losses
from hat_jax.data import documents
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.train.task import Task



def _byte_alphabet() -> dict[str, int]:
  """GPT-2's bytes_to_unicode, inverted: byte-level BPE symbol -> byte value."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def train_tokenizer(docs, vocab_size: int, max_bytes: int, path: str | None):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

  if path and os.path.exists(path):
    return Tokenizer.from_file(path)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

  def texts():
    used = 0
    for d in docs:
      if used >= max_bytes:
        return
      chunk = d[:max_bytes - used]
      used += len(chunk)
      yield chunk.decode("utf-8", errors="replace")
  tok.train_from_iterator(texts(), trainer)
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path)
  return tok


class TokenRows:
  """Packed rows of `seq_len + 1` tokens -> tokens/targets/positions/segment_ids/loss_mask/target_bytes."""

  def __init__(self, ids: np.ndarray, doc_ids: np.ndarray, token_bytes: np.ndarray, seq_len: int):
    n = (len(ids) - 1) // seq_len
    self.ids, self.doc_ids, self.token_bytes, self.seq_len, self.n = ids, doc_ids, token_bytes, seq_len, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    s = slice(i * self.seq_len, (i + 1) * self.seq_len + 1)
    ids, docs = self.ids[s], self.doc_ids[s]
    seg = docs[:-1] - docs[0] + 1
    starts = np.concatenate([[True], seg[1:] != seg[:-1]])
    pos = np.arange(self.seq_len) - np.maximum.accumulate(np.where(starts, np.arange(self.seq_len), 0))
    mask = (docs[1:] == docs[:-1]).astype(np.float32)  # no prediction across a document boundary
    return {"tokens": ids[:-1].astype(np.int32), "targets": ids[1:].astype(np.int32),
            "positions": pos.astype(np.int32), "segment_ids": seg.astype(np.int32), "loss_mask": mask,
            "target_bytes": (self.token_bytes[ids[1:]] * mask).astype(np.float32)}


def bpe_loss(model: DecoderLM, params, batch):
  """Next-token cross-entropy over `loss_mask`, and bits per byte of the target tokens' bytes."""
  logits, _ = model.apply(params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  ce = losses.token_nll(logits, batch["targets"])
  mask = batch["loss_mask"]
  loss = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  nbytes = jnp.sum(batch["target_bytes"])
  # Per batch; the eval averages batches of equal token count, so this is bytes-weighted up to
  # the spread of bytes per batch (small next to the differences the table shows).
  bpb = jnp.sum(ce * mask) / losses.LN2 / jnp.maximum(nbytes, 1.0)
  return loss, {"loss": loss, "bits_per_byte": bpb, "token_accuracy": jnp.sum(
      (jnp.argmax(logits, -1) == batch["targets"]) * mask) / jnp.maximum(jnp.sum(mask), 1.0),
                "bytes_per_token": nbytes / jnp.maximum(jnp.sum(mask), 1.0)}


class BPETask(Task):
  unit = "tokens"

  def __init__(self, config):
    super().__init__(config)
    self.model = DecoderLM(DecoderLMConfig.from_config(config.model))

  @functools.cached_property
  def tokenizer(self):
    d = self.config.data
    from hat_jax.data import fetch  # pylint: disable=g-import-not-at-top

    cache = str(fetch.resolve_cache_dir(d.cache_dir or None))
    path = os.path.join(cache, "bpe", f"{d.corpus}-bpe{self.config.model.vocab_size}-{d.bpe_train_bytes}.json")
    return train_tokenizer(documents.load_documents(d, "train"), int(self.config.model.vocab_size),
                           int(d.bpe_train_bytes), path)

  @functools.cached_property
  def token_bytes(self) -> np.ndarray:
    alphabet = _byte_alphabet()
    out = np.zeros(int(self.config.model.vocab_size), np.float32)
    for tok, i in self.tokenizer.get_vocab().items():
      out[i] = sum(1 for ch in tok if ch in alphabet)
    return out

  @functools.lru_cache(maxsize=2)
  def rows(self, split: str, max_bytes: int | None = None) -> TokenRows:
    docs = list(documents.load_documents(self.config.data, split))
    ids, doc_ids, used = [], [], 0
    for i, doc in enumerate(docs):
      if max_bytes is not None and used >= max_bytes:
        break
      enc = self.tokenizer.encode(doc.decode("utf-8", errors="replace")).ids
      used += len(doc)
      ids.append(np.asarray(enc, np.int32))
      doc_ids.append(np.full(len(enc), i, np.int32))
    return TokenRows(np.concatenate(ids), np.concatenate(doc_ids), self.token_bytes, int(self.config.data.seq_tokens))

  def init_params(self, rng):
    batch = self.dummy_batch()
    return self.model.init(rng, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])

  def dummy_batch(self):
    n = int(self.config.data.seq_tokens)
    z = np.zeros((1, n), np.int32)
    return {"tokens": z, "targets": z, "positions": np.arange(n, dtype=np.int32)[None], "segment_ids": z + 1,
            "loss_mask": np.ones((1, n), np.float32), "target_bytes": np.ones((1, n), np.float32)}

  def loss(self, params, batch, rng):
    del rng
    return bpe_loss(self.model, params, batch)

  def train_iterator(self, seed, process_index=0, process_count=1):
    from hat_jax.data import pipeline  # pylint: disable=g-import-not-at-top

    return pipeline.train_iterator(self.rows("train", int(self.config.data.train_bytes)),
                                   int(self.config.train.batch_size), seed, process_index, process_count)

  @functools.lru_cache(maxsize=1)
  def eval_batches(self):
    from hat_jax.data import pipeline  # pylint: disable=g-import-not-at-top

    d = self.config.data
    return pipeline.eval_batches(self.rows("validation"), int(d.eval_batch_size), int(d.eval_batches))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`experiments/hat_tables/bpe_lm.py:width=96,vocab=1024` (a config file for the sweep and the CLI)."""
  arg = common.parse_arg(arg, width=96, layers=2, vocab=1024, seq_tokens=40, corpus="english")
  config = common.base_config("experiments.hat_tables.bpe_lm:BPETask")
  config.train = common.train_defaults(steps=150, batch_size=8, learning_rate=3e-3, warmup_steps=15,
                                       log_every=30, eval_every=150, checkpoint_every=150)
  # Packed rows whose positions rise by one within each document: attention may mask by index.
  config.model = ml_collections.ConfigDict(dict(decoder=hat_config.stack(arg.width, arg.layers, 16, None),
                                                vocab_size=arg.vocab, mask_by_index=True))
  config.data = ml_collections.ConfigDict(dict(
      corpus=arg.corpus, cache_dir="", seq_tokens=arg.seq_tokens, eval_batch_size=8, eval_batches=16,
      bpe_train_bytes=2_000_000, train_bytes=4_000_000))
  return config
