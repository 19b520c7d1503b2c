"""HAT scaling sweep: 5 widths at STEPS, plus 4 widths at SHORT_STEPS and 3 at LONG_STEPS (for L(N, D)).

  python -m hat_jax.sweep --sweep=configs/sweeps/hat_scaling.py --workdir=runs/scaling

Byte encoder/decoder width = backbone width / 2 (configs/hat.py "tiny" keeps the same ratio),
1 encoder + 1 decoder layer, 2 backbone layers, head_dim 16.
"""

from configs.sweeps import common

BASE_CONFIG = "configs/hat.py:size=tiny,corpus=english"
WIDTHS = (32, 48, 64, 96, 128)  # backbone d_model
SHORT_WIDTHS = (32, 48, 96, 128)
LONG_WIDTHS = (32, 64, 128)


def run(width: int, steps: int) -> dict:
  out = {"name": f"hat-w{width}-s{steps}", **common.train_overrides(steps)}
  out.update(common.stack_overrides("model.backbone", width, 2))
  out.update(common.stack_overrides("model.encoder", width // 2, 1))
  out.update(common.stack_overrides("model.decoder", width // 2, 1))
  return out


def get_sweep() -> list[dict]:
  return ([run(w, common.STEPS) for w in WIDTHS] + [run(w, common.SHORT_STEPS) for w in SHORT_WIDTHS]
          + [run(w, common.LONG_STEPS) for w in LONG_WIDTHS])
