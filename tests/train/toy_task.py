"""A tiny Task for trainer tests: one transformer block from `hat_jax.models.layers` on synthetic
sequences from a fixed random permutation (next token = perm[token]), so the loss can fall fast.

Registered nowhere: configs name it as `config.task = "toy_task:ToyTask"` (this directory on
sys.path). `config.data` knobs inject faults: `nan_at_step` (a NaN loss scale on that batch) and
`sigterm_at_batch` (the iterator sends SIGTERM to its own process when fetching that batch);
`batch_delay_s` slows each batch fetch (so a kill from outside lands at a random point of a run).
"""

from __future__ import annotations

import os
import signal
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from hat_jax.models import layers
from hat_jax.train.task import Task


class ToyLM(nn.Module):
  vocab: int
  stack: layers.StackConfig
  attention: bool = True  # False: a residual SwiGLU only (no DenseGeneral; traceable under a mesh)

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.stack.d_model, embedding_init=layers.embed_init(), name="embed")(tokens)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if self.attention:
      x, _ = layers.Stack(self.stack, layers.stack_mask(self.stack), name="stack")(
          x, positions=positions, segment_ids=jnp.ones_like(tokens))
    else:
      x = x + layers.SwiGLU(self.stack.mlp_dim, name="mlp")(layers.RMSNorm(name="mlp_norm")(x))
    x = layers.RMSNorm(name="final_norm")(x)
    return nn.DenseGeneral(self.vocab, use_bias=False, name="head", kernel_init=nn.with_logical_partitioning(
        layers.dense_init(), ("embed", "vocab")))(x)


class _FaultyIterator:
  """Wraps a grain iterator; fires the configured faults. State is the grain state (JSON dict)."""

  def __init__(self, inner, sigterm_at_batch: int, delay_s: float = 0.0):
    self._inner, self._sigterm_at, self._fetched, self._delay = inner, sigterm_at_batch, 0, delay_s

  def __next__(self):
    if self._fetched == self._sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    self._fetched += 1
    if self._delay:
      time.sleep(self._delay)
    return next(self._inner)

  def get_state(self) -> dict:
    return self._inner.get_state()

  def set_state(self, state: dict) -> None:
    self._inner.set_state(state)


class ToyTask(Task):
  unit = "tokens"
  sum_metrics = ("num_tokens",)

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.model = ToyLM(m.vocab, layers.StackConfig(
        d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim, mlp_dim=m.mlp_dim), attention=m.get("attention", True))
    self.perm = np.random.default_rng(1234).permutation(m.vocab)

  def init_params(self, rng):
    tokens = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
    return self.model.init(rng, tokens)["params"]

  def loss(self, params, batch, rng):
    del rng
    logits = self.model.apply({"params": params}, batch["inputs"]).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    num = jnp.sum(mask)
    loss = jnp.sum(nll * mask) / jnp.maximum(num, 1.0) * jnp.mean(batch["loss_scale"])
    return loss, {"bits_per_token": loss / jnp.log(2.0), "num_tokens": num}

  def _example(self, seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index])
    seq = [int(rng.integers(self.config.model.vocab))]
    for _ in range(self.config.data.seq_len):
      seq.append(int(self.perm[seq[-1]]) if rng.random() > 0.1 else int(rng.integers(self.config.model.vocab)))
    seq = np.asarray(seq, np.int32)
    return {"inputs": seq[:-1], "targets": seq[1:], "loss_mask": np.ones(seq.shape[0] - 1, np.float32),
            "loss_scale": np.float32(1.0)}

  def train_iterator(self, seed, process_index=0, process_count=1):
    per_process = self.config.train.batch_size // process_count
    nan_at = int(self.config.data.nan_at_step)

    def inject(i, batch):
      if i == nan_at:
        batch = {**batch, "loss_scale": np.full_like(batch["loss_scale"], np.nan)}
      return batch

    ds = (grain.MapDataset.range(10_000).seed(seed).shuffle().repeat(None)
          .map_with_index(lambda i, _: self._example(seed, i))
          [process_index::process_count]
          .batch(per_process, drop_remainder=True)
          .map_with_index(inject))
    return _FaultyIterator(iter(ds.to_iter_dataset()), int(self.config.data.sigterm_at_batch),
                           float(self.config.data.batch_delay_s))

  def eval_batches(self):
    examples = [self._example(10_000_019, i) for i in range(8)]
    return [{k: np.stack([e[k] for e in examples[j:j + 4]]) for k in examples[0]} for j in (0, 4)]

  def generate(self, params, rng):
    tokens = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
    logits = self.model.apply({"params": params}, tokens)
    return "toy sample: " + " ".join(str(int(t)) for t in jnp.argmax(logits[0], -1)[:8])


def toy_config(**train_overrides) -> ml_collections.ConfigDict:
  config = common.base_config("toy_task:ToyTask", seed=0)
  config.train = common.train_defaults(**{
      "steps": 12, "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 2, "log_every": 2,
      "eval_every": 6, "checkpoint_every": 4, "keep_checkpoints": 5, **train_overrides})
  config.model = ml_collections.ConfigDict(dict(
      vocab=32, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32))
  config.data = ml_collections.ConfigDict(dict(seq_len=16, nan_at_step=-1, sigterm_at_batch=-1, batch_delay_s=0.0))
  return config


def one_device():
  return jax.devices()[:1]


def single_device_config(**train_overrides) -> ml_collections.ConfigDict:
  """The toy config on a (1, 1, 1) mesh; pair with `devices=one_device()`."""
  config = toy_config(**train_overrides)
  config.mesh.data = 1
  return config


def get_config(arg=None):
  """For the CLI test: `--config=tests/train/toy_task.py`."""
  del arg
  return toy_config()
