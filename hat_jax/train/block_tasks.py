"""Tasks for the Block Transformer and its vanilla byte-level baseline (`config.task` names in TASKS).

Both train and score on the same block-aligned rows (`hat_jax.data.blocks`): windows of the corpus's
documents, each starting at a block boundary, with `loss_mask` marking the same target bytes for both
models, so their bits per byte are directly comparable. The vanilla baseline is a `DecoderLM` whose
input table has the pad row the rows need.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hat_jax import losses
from hat_jax.data import blocks, documents
from hat_jax.data.batching import per_process_batch_size
from hat_jax.data.iterators import Batch
from hat_jax.models.block_transformer import BlockTransformer, BlockTransformerConfig
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import empty_caches
from hat_jax.train import flops
from hat_jax.train.task import Metrics, Task

# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def block_loss(model: BlockTransformer, params, batch: Batch) -> tuple[jax.Array, Metrics]:
  L = model.cfg.block_len
  logits = model.apply(params, batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  batch_size = logits.shape[0]
  targets = batch["tokens"][:, L:].reshape(batch_size, -1, L)
  mask = batch["loss_mask"][:, L:].reshape(batch_size, -1, L)
  return losses.masked_token_metrics(logits, targets, mask)


def vanilla_loss(model: DecoderLM, params, batch: Batch) -> tuple[jax.Array, Metrics]:
  logits, _ = model.apply(params, batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  same_doc = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
  return losses.masked_token_metrics(logits[:, :-1], batch["tokens"][:, 1:], batch["loss_mask"][:, 1:] * same_doc)


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


class _BlockRowsTask(Task):
  """Data wiring shared by both tasks: block-aligned rows of `config.data.corpus`."""

  unit = "bytes"
  sum_metrics = ()

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model = self.build_model(config.model)
    if self.model.cfg.pad_id != blocks.PAD_ID:
      raise ValueError(f"Block-aligned rows are bytes padded with id {blocks.PAD_ID}: the model needs "
                       f"vocab_size=256 and a pad row (its pad_id is {self.model.cfg.pad_id}).")
    self.block_len = getattr(self.model.cfg, "block_len", None) or int(config.data.block_len)
    if documents.is_tfds(config.data.corpus):
      raise ValueError(f"data.corpus={config.data.corpus!r}: the block tasks sample windows from a corpus held "
                       "in memory; TFDS corpora are streamed by the byte tasks (hat, bytes) only.")
    self._docs: dict[str, list[bytes]] = {}

  def build_model(self, model_cfg):
    raise NotImplementedError

  def _corpus(self, split: str) -> list[bytes]:
    if split not in self._docs:
      self._docs[split] = list(documents.load_documents(self.config.data, split))
    return self._docs[split]

  def init_params(self, rng):
    seq_len = 2 * self.block_len
    return self.model.init(rng, jnp.zeros((1, seq_len), jnp.int32))

  def train_iterator(self, seed: int, process_index: int = 0, process_count: int = 1):
    d = self.config.data
    return blocks.DocumentWindows(self._corpus("train"),
                                  per_process_batch_size(self.config.train.batch_size, process_count), d.seq_len,
                                  self.block_len, seed, random_pad=bool(d.get("random_pad_first_block", False)),
                                  shard=(process_index, process_count))

  def eval_batches(self) -> Iterable[Batch]:
    d = self.config.data
    return blocks.eval_batches(self._corpus("validation"), d.seq_len, self.block_len, d.eval_rows, d.eval_batch_size)

  def units_per_batch(self, batch: Batch) -> int:
    return int(np.sum(batch["loss_mask"]))

  # The per-row FLOP formula of the family (hat_jax.train.flops), set by the subclasses.
  row_flops = None

  def training_flops(self, batch=None, *, attention: str = "causal"):
    b, s = flops.batch_shape(batch, "tokens", (self.config.train.batch_size, self.config.data.seq_len))[:2]
    return flops.per_step(self.row_flops(self.config.model, s, attention=attention), b)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    row = blocks.aligned_row([np.zeros(1, np.uint8)], int(self.config.data.seq_len), self.block_len, [0])
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape, v.dtype) for k, v in row.items()}

  def generate(self, params, rng) -> str:
    """Continues `config.sample.prompt` by `config.sample.num_bytes` bytes with the jitted engine."""
    from hat_jax.generate.block_engine import continue_prompts
    from hat_jax.generate.sampling import SamplingConfig
    s = self.config.sample
    num = int(s.get("num_bytes", 64))
    num += (-num) % self.block_len if isinstance(self.model, BlockTransformer) else 0
    sampling = SamplingConfig.from_config(s)
    out = continue_prompts(self.model.cfg, params, [str(s.get("prompt", "The ")).encode("utf-8")], rng, num_new=num,
                           sampling=sampling)[0]
    return bytes(out.astype(np.uint8)).decode("utf-8", errors="replace")


class BlockTransformerTask(_BlockRowsTask):
  row_flops = staticmethod(flops.block_transformer_forward_flops)

  def build_model(self, model_cfg):
    return BlockTransformer(BlockTransformerConfig.from_config(model_cfg))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    return block_loss(self.model, params, batch)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    """The engine's steps (`hat_jax.generate.block_engine`): "block" = one block through the cached block
    decoder (caches of a training row's blocks); "token" = one byte through the cached token decoder."""
    cfg, model, b = self.model.cfg, self.model, batch_size
    num_blocks = int(self.config.data.seq_len) // cfg.block_len
    block_caches = jax.eval_shape(lambda: empty_caches(cfg.block_decoder, b, num_blocks, cfg.jnp_dtype))
    token_caches = jax.eval_shape(lambda: empty_caches(cfg.token_decoder, b, cfg.token_context, cfg.jnp_dtype))
    n_ctx = cfg.prefix_len if cfg.decoding == "prefix" else cfg.block_len
    ctx_vecs = jax.ShapeDtypeStruct((b, n_ctx, cfg.token_decoder.d_model), cfg.jnp_dtype)

    def block(params, blocks, caches):
      return model.apply(params, blocks, caches, method=model.block_step)

    def token(params, ctx_vecs, byte, caches):
      return model.apply(params, ctx_vecs, byte, 1, caches, method=model.token_next)

    return {"block": (block, (jax.ShapeDtypeStruct((b, 1, cfg.block_len), jnp.int32), block_caches)),
            "token": (token, (ctx_vecs, jax.ShapeDtypeStruct((b,), jnp.int32), token_caches))}


class VanillaLMTask(_BlockRowsTask):
  row_flops = staticmethod(flops.decoder_lm_forward_flops)

  def build_model(self, model_cfg):
    return DecoderLM(DecoderLMConfig.from_config(model_cfg))

  def loss(self, params, batch, rng) -> tuple[jax.Array, Metrics]:
    del rng
    return vanilla_loss(self.model, params, batch)

  def decode_steps(self, batch_size: int) -> dict[str, tuple]:
    from hat_jax.generate.block_engine import decoder_lm_steps

    return decoder_lm_steps(self.model.cfg, batch_size, int(self.config.data.seq_len))


TASKS: dict[str, type[Task]] = {"block_transformer": BlockTransformerTask, "vanilla_lm": VanillaLMTask}
