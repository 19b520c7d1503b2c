"""Shared pieces of the scaling sweep specs (`python -m hat_jax.sweep --sweep=configs/sweeps/<x>.py`).

A sweep spec returns a list of runs; each run is {"name": ..., "<dotted config key>": value, ...}.
Budgets here are tiny on purpose: both CPU sweeps together (24 runs) take ~30 minutes on 2 CPU cores.
"""

from configs import hat as hat_config

# Training budget shared by every run of both sweeps (same data, batches and schedule), so the only
# thing that changes across runs is the model (and, for the L(N, D) runs, the step count).
STEPS = 150
# Extra runs at a smaller and a larger data budget, so D varies independently of N: L(N, D) has 5
# parameters, and a grid of 3 data budgets x several widths identifies the D term (with only two
# short runs, beta was free to run off to 8 with an infinite interval).
SHORT_STEPS = 60
LONG_STEPS = 300
SEQ_BYTES, SEQ_WORDS, BATCH = 128, 40, 8


def train_overrides(steps: int) -> dict:
  return {
      "train.steps": steps, "train.batch_size": BATCH, "train.learning_rate": 3e-3,
      "train.warmup_steps": max(1, steps // 10), "train.log_every": max(1, steps // 5),
      "train.eval_every": steps, "train.checkpoint_every": steps,
      "data.seq_bytes": SEQ_BYTES, "data.seq_words": SEQ_WORDS, "data.eval_batch_size": BATCH,
      "data.eval_batches": 4,
  }


def stack_overrides(prefix: str, d_model: int, num_layers: int, head_dim: int = 16) -> dict:
  """Every width-derived field of one `configs.hat.stack` (heads, kv heads, MLP width)."""
  s = hat_config.stack(d_model, num_layers, head_dim, None)
  keys = ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
  return {f"{prefix}.{k}": s[k] for k in keys}
