"""Tasks for the Block Transformer and its vanilla byte-level baseline (`config.task` names in TASKS).

Data layout (shared by both tasks so their losses are over the *same* target bytes):
  Rows are block aligned: every document starts at a block boundary, optionally after `lead_pad` pad
  tokens (pad_id = 256), and is padded to a block boundary at its end (`block_align`). So a block never
  mixes two documents, the block decoder can use plain block-level segment ids, and the paper's random
  first-block padding is just a random `lead_pad` in [0, L_B - 1] per document (training only; the
  paper's evaluation uses L_B - 1). `loss_mask` marks target bytes: real bytes outside the first block
  of their document (the Block Transformer never predicts a document's first block).
  The vanilla model is scored on exactly those bytes (next-byte prediction within the row), so its loss
  and the block model's are directly comparable (bits per byte over the same bytes).

Where the rows come from: `DocumentWindows`, a deterministic, checkpointable sampler of block-aligned
single-document windows from `hat_jax.data.corpora` (the default corpus is "english"). Packed rows
from another source (several documents per row, not block aligned, e.g. the byte pipeline) go through
`block_align`, which re-lays them out; bytes pushed past the row end by the padding are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hat_jax.models.block_transformer import BlockTransformer, BlockTransformerConfig, VanillaConfig, VanillaLM
from hat_jax.models.layers import empty_caches
from hat_jax.data.iterators import Batch, StepIndexedBatches
from hat_jax.train.task import Metrics, Task

PAD_ID = 256  # = vocab_size for bytes


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def aligned_row(docs: list[np.ndarray], seq_len: int, block_len: int, lead_pads: list[int],
                pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
  """Lays documents (uint8/int arrays) into one row of seq_len tokens, each starting at a block boundary.

  Returns tokens, segment_ids (1.. per document, 0 = padding after the last document), positions
  (within document, counting its lead pads) and loss_mask (real bytes outside the document's first block).
  """
  if seq_len % block_len:
    raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_len ({block_len}).")
  tokens = np.full(seq_len, pad_id, np.int32)
  segment_ids = np.zeros(seq_len, np.int32)
  positions = np.zeros(seq_len, np.int32)
  loss_mask = np.zeros(seq_len, np.float32)
  at = 0
  for i, (doc, lead) in enumerate(zip(docs, lead_pads)):
    if not 0 <= lead < block_len:
      raise ValueError(f"lead padding must be in [0, block_len), got {lead}.")
    if at >= seq_len:
      break
    n = min(len(doc), seq_len - at - lead)
    span = -(-(lead + max(n, 0)) // block_len) * block_len  # padded to a block boundary
    span = min(span, seq_len - at)
    if n > 0:
      tokens[at + lead:at + lead + n] = doc[:n]
    segment_ids[at:at + span] = i + 1
    positions[at:at + span] = np.arange(span)
    if n > 0:
      is_byte = np.zeros(span, bool)
      is_byte[lead:lead + n] = True
      loss_mask[at:at + span] = is_byte & (np.arange(span) >= block_len)
    at += span
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions, loss_mask=loss_mask)


def block_align(tokens: np.ndarray, segment_ids: np.ndarray, block_len: int, rng: np.random.Generator | None,
                lead_pad: int | None = None, seq_len: int | None = None) -> dict[str, np.ndarray]:
  """Re-lays packed rows [B, S] (documents = runs of equal nonzero segment ids) block aligned.

  lead_pad: fixed pad count before every document; None draws it uniformly from [0, L_B - 1] per
  document with `rng` (the paper's random first-block padding).
  """
  tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
  seq_len = tokens.shape[1] if seq_len is None else seq_len
  rows = []
  for toks, segs in zip(tokens, segment_ids):
    change = np.flatnonzero(np.diff(segs) != 0) + 1
    bounds = np.concatenate([[0], change, [len(segs)]])
    docs = [toks[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if segs[a] != 0]
    if lead_pad is None:
      if rng is None:
        raise ValueError("random first-block padding (lead_pad=None) needs an rng.")
      leads = list(rng.integers(0, block_len, size=len(docs)))
    else:
      leads = [lead_pad] * len(docs)
    rows.append(aligned_row(docs, seq_len, block_len, leads))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class DocumentWindows(StepIndexedBatches):
  """Infinite batches of block-aligned single-document windows, deterministic in (seed, step, shard).

  Each row takes a uniformly random document (weighted by length) and offset, and lays it out with a
  lead padding (random in [0, L_B - 1] when `random_pad`, else 0). Checkpointable: the state is the step.
  """

  def __init__(self, docs: list[bytes], batch_size: int, seq_len: int, block_len: int, seed: int,
               random_pad: bool, shard: tuple[int, int] = (0, 1)):
    if not docs:
      raise ValueError("DocumentWindows needs at least one document.")
    super().__init__(seed, shard)
    self.docs = [np.frombuffer(d, np.uint8) for d in docs]
    lengths = np.array([len(d) for d in self.docs], np.float64)
    self.weights = lengths / lengths.sum()
    self.batch_size, self.seq_len, self.block_len, self.random_pad = batch_size, seq_len, block_len, random_pad

  def make_batch(self, rng: np.random.Generator) -> Batch:
    rows = []
    for _ in range(self.batch_size):
      doc = self.docs[rng.choice(len(self.docs), p=self.weights)]
      lead = int(rng.integers(0, self.block_len)) if self.random_pad else 0
      start = int(rng.integers(0, max(1, len(doc) - (self.seq_len - lead) + 1)))
      rows.append(aligned_row([doc[start:]], self.seq_len, self.block_len, [lead]))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def eval_rows(docs: list[bytes], seq_len: int, block_len: int, max_rows: int) -> list[dict[str, np.ndarray]]:
  """Consecutive non-overlapping windows of each document, each after L_B - 1 pads (the paper's eval)."""
  lead = block_len - 1
  stride = seq_len - lead
  rows = []
  for d in docs:
    doc = np.frombuffer(d, np.uint8)
    for start in range(0, max(1, len(doc) - block_len), stride):
      rows.append(aligned_row([doc[start:]], seq_len, block_len, [lead]))
      if len(rows) == max_rows:
        return rows
  return rows


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def masked_xent(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metrics]:
  """Mean cross-entropy (nats) over mask; metrics in bits per byte plus the byte count."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  mask = mask.astype(jnp.float32)
  # Masked targets may be pad_id (= V, outside the logits); clip so the gather stays finite.
  targets = jnp.clip(targets.astype(jnp.int32), 0, logits.shape[-1] - 1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  count = jnp.sum(mask)
  loss = jnp.sum(jnp.where(mask > 0, nll, 0.0) * mask) / jnp.maximum(count, 1.0)
  return loss, {"loss": loss, "bits_per_byte": loss / jnp.log(2.0), "target_bytes": count}


def block_loss(model: BlockTransformer, params, batch: Batch) -> tuple[jax.Array, Metrics]:
  L = model.cfg.block_len
  logits = model.apply(params, batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  batch_size = logits.shape[0]
  targets = batch["tokens"][:, L:].reshape(batch_size, -1, L)
  mask = batch["loss_mask"][:, L:].reshape(batch_size, -1, L)
  return masked_xent(logits, targets, mask)


def vanilla_loss(model: VanillaLM, params, batch: Batch) -> tuple[jax.Array, Metrics]:
  logits, _ = model.apply(params, batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  same_doc = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
  return masked_xent(logits[:, :-1], batch["tokens"][:, 1:], batch["loss_mask"][:, 1:] * same_doc)


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


class _ByteTask(Task):
  unit = "bytes"
  sum_metrics = ()

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model = self.build_model(config.model)
    self.block_len = getattr(self.model.cfg, "block_len", None) or int(config.data.block_len)
    self._docs: dict[str, list[bytes]] = {}

  def build_model(self, model_cfg):
    raise NotImplementedError

  def _corpus(self, split: str) -> list[bytes]:
    if split not in self._docs:
      from hat_jax.data import corpora
      self._docs[split] = corpora.load_corpus(self.config.data.corpus, split, self.config.data.get("cache_dir") or None)
    return self._docs[split]

  def init_params(self, rng):
    seq_len = 2 * self.block_len
    return self.model.init(rng, jnp.zeros((1, seq_len), jnp.int32))

  def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1):
    d = self.config.data
    if self.config.train.batch_size % process_count:
      raise ValueError(f"config.train.batch_size ({self.config.train.batch_size}) must divide over {process_count} processes.")
    return DocumentWindows(self._corpus("train"), self.config.train.batch_size // process_count, d.seq_len,
                           self.block_len, seed,
                           random_pad=bool(d.get("random_pad_first_block", False)),
                           shard=(process_index, process_count))

  def eval_batches(self) -> Iterable[Batch]:
    d = self.config.data
    rows = eval_rows(self._corpus("validation"), d.seq_len, self.block_len, d.eval_rows)
    return [{k: np.stack([r[k] for r in rows[i:i + d.eval_batch_size]]) for k in rows[0]}
            for i in range(0, len(rows), d.eval_batch_size)]

  def units_per_batch(self, batch: Batch) -> int:
    return int(np.sum(batch["loss_mask"]))

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    row = aligned_row([np.zeros(1, np.uint8)], int(self.config.data.seq_len), self.block_len, [0])
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape, v.dtype) for k, v in row.items()}

  def sample(self, params, rng) -> str:
    """Continues `config.sample.prompt` by `config.sample.num_bytes` bytes with the jitted engine."""
    from hat_jax.generate.block_engine import generate
    from hat_jax.generate.sampling import SamplingConfig
    s = self.config.sample
    prompt = np.frombuffer(str(s.get("prompt", "The ")).encode("utf-8"), np.uint8).astype(np.int32)[None]
    num = int(s.get("num_bytes", 64))
    num += (-num) % self.block_len if isinstance(self.model, BlockTransformer) else 0
    sampling = SamplingConfig(float(s.get("temperature", 0.8)), s.get("top_k") or None, s.get("top_p") or None)
    out = generate(self.model.cfg, params, jnp.asarray(prompt), rng, num_new=num, sampling=sampling)
    return bytes(np.asarray(out[0], np.uint8)).decode("utf-8", errors="replace")


class BlockTransformerTask(_ByteTask):
  def build_model(self, model_cfg):
    return BlockTransformer(BlockTransformerConfig.from_config(model_cfg))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    return block_loss(self.model, params, batch)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """The engine's steps (`hat_jax.generate.block_engine`): "block" = one block through the cached block
    decoder (caches of a training row's blocks); "token" = one byte through the cached token decoder."""
    cfg, model, b = self.model.cfg, self.model, batch_size
    blocks = int(self.config.data.seq_len) // cfg.block_len
    block_caches = jax.eval_shape(lambda: empty_caches(cfg.block_decoder, b, blocks, cfg.jnp_dtype))
    token_caches = jax.eval_shape(lambda: empty_caches(cfg.token_decoder, b, cfg.token_context, cfg.jnp_dtype))
    n_ctx = cfg.prefix_len if cfg.decoding == "prefix" else cfg.block_len
    ctx_vecs = jax.ShapeDtypeStruct((b, n_ctx, cfg.token_decoder.d_model), cfg.jnp_dtype)

    def block(params, blocks, caches):
      return model.apply(params, blocks, caches, method=model.block_step)

    def token(params, ctx_vecs, byte, caches):
      return model.apply(params, ctx_vecs, byte, 1, caches, method=model.token_next)

    return {"block": (block, (jax.ShapeDtypeStruct((b, 1, cfg.block_len), jnp.int32), block_caches)),
            "token": (token, (ctx_vecs, jax.ShapeDtypeStruct((b,), jnp.int32), token_caches))}


class VanillaLMTask(_ByteTask):
  def build_model(self, model_cfg):
    return VanillaLM(VanillaConfig.from_config(model_cfg))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    return vanilla_loss(self.model, params, batch)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """"token": one byte through the cached decoder, caches of a training row."""
    cfg, model, b = self.model.cfg, self.model, batch_size
    caches = jax.eval_shape(lambda: empty_caches(cfg.decoder, b, int(self.config.data.seq_len), cfg.jnp_dtype))
    return {"token": (lambda params, tokens, caches: model.apply(params, tokens, caches=caches),
                      (jax.ShapeDtypeStruct((b, 1), jnp.int32), caches))}


TASKS: dict[str, type[Task]] = {"block_transformer": BlockTransformerTask, "vanilla_lm": VanillaLMTask}

