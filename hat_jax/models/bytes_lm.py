"""The byte-level baseline: one causal transformer over the byte stream (same batches as HAT)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from hat_jax.data.splitter import VOCAB_SIZE
from hat_jax.kernels import MaskSpec
from hat_jax.models import lm_metrics
from hat_jax.models.layers import RMSNorm, Stack, StackConfig, dataclass_from_config, embed_init, lm_head


@dataclasses.dataclass(frozen=True)
class BytesLMConfig:
  stack: StackConfig
  attention_impl: str = "xla"
  dtype: str = "float32"

  @classmethod
  def from_config(cls, model_cfg) -> "BytesLMConfig":
    return dataclass_from_config(cls, model_cfg, "bytes-LM model", stacks=("stack",))


class BytesLM(nn.Module):
  """bytes [B, S] -> embed -> causal stack -> norm -> logits [B, S, 256]."""

  cfg: BytesLMConfig

  def setup(self):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.embed = nn.Embed(VOCAB_SIZE, cfg.stack.d_model, embedding_init=embed_init(), dtype=dtype)
    self.stack = Stack(cfg.stack, MaskSpec(causal=True, window=cfg.stack.window), cfg.attention_impl, dtype,
                       mask_by_index=True)
    self.norm = RMSNorm(cfg.stack.norm_eps, dtype)
    self.lm_head = lm_head(VOCAB_SIZE, dtype=dtype)

  def __call__(self, byte_ids, positions, segment_ids, caches=None):
    x, caches = self.stack(self.embed(byte_ids), positions=positions, segment_ids=segment_ids, caches=caches)
    return self.lm_head(self.norm(x)).astype(jnp.float32), caches

  def loss_and_metrics(self, batch):
    logits, _ = self(batch["bytes"], batch["positions"], batch["segment_ids"])
    return lm_metrics.next_byte_metrics(logits, batch)
