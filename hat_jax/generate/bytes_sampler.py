"""Cached sampling for the byte baseline (one KV cache; prefill then one byte per step)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.data.splitter import BOS, EOD
from hat_jax.generate.sampling import SamplingConfig, sample
from hat_jax.models.bytes_lm import BytesLM
from hat_jax.models.layers import empty_caches


def generate_bytes(model: BytesLM, params, prompts: Sequence[bytes], max_new_bytes: int, rng: jax.Array,
                   sampling: SamplingConfig = SamplingConfig(), stop_at_eod: bool = True) -> list[bytes]:
  seqs = [bytes([BOS]) + bytes(p) for p in prompts]
  batch, p_len = len(seqs), max(len(s) for s in seqs)
  ids = np.zeros((batch, p_len), np.int32)
  seg = np.zeros((batch, p_len), np.int32)
  for b, s in enumerate(seqs):
    ids[b, :len(s)], seg[b, :len(s)] = np.frombuffer(s, np.uint8), 1
  caches = empty_caches(model.cfg.stack, batch, p_len + max_new_bytes, jnp.dtype(model.cfg.dtype))
  step = jax.jit(lambda p, i, pos, sg, c: model.apply(p, i, pos, sg, c))
  pos = np.broadcast_to(np.arange(p_len, dtype=np.int32), (batch, p_len))
  logits, caches = step(params, ids, pos, seg, caches)
  lens = np.array([len(s) for s in seqs])
  next_logits = logits[np.arange(batch), lens - 1]
  out = [bytearray() for _ in prompts]
  done = np.zeros(batch, bool)
  for _ in range(max_new_bytes):
    rng, key = jax.random.split(rng)
    new = np.asarray(sample(next_logits, key, sampling))
    active = ~done
    for b in np.flatnonzero(active):
      out[b].append(int(new[b]))
    logits, caches = step(params, new[:, None], lens[:, None].astype(np.int32), active[:, None].astype(np.int32), caches)
    lens = lens + active
    next_logits = logits[:, 0]
    if stop_at_eod:
      done |= active & (new == EOD)
    if done.all():
      break
  return [bytes(o) for o in out]
