"""Byte-baseline scaling sweep: the same widths, data and budgets as hat_scaling.py.

  python -m hat_jax.sweep --sweep=configs/sweeps/bytes_scaling.py --workdir=runs/scaling

One causal transformer over bytes with the HAT backbone's width and depth (2 layers, head_dim 16).
"""

from configs.sweeps import common

BASE_CONFIG = "configs/bytes.py:size=tiny,corpus=english"
WIDTHS = (32, 48, 64, 96, 128)
SHORT_WIDTHS = (32, 48, 96, 128)
LONG_WIDTHS = (32, 64, 128)


def run(width: int, steps: int) -> dict:
  out = {"name": f"bytes-w{width}-s{steps}", **common.train_overrides(steps)}
  out.update(common.stack_overrides("model.stack", width, 2))
  return out


def get_sweep() -> list[dict]:
  return ([run(w, common.STEPS) for w in WIDTHS] + [run(w, common.SHORT_STEPS) for w in SHORT_WIDTHS]
          + [run(w, common.LONG_STEPS) for w in LONG_WIDTHS])
