"""Moved to hat_jax/sweep.py (`python -m hat_jax.sweep`). This alias keeps `from experiments import sweep`
(experiments/hat_tables/run.py) and old `python -m experiments.sweep` commands working; delete it once
those callers use hat_jax.sweep."""

import sys

from hat_jax import sweep

if __name__ == "__main__":
  sys.exit(sweep.main())
sys.modules[__name__] = sweep  # the same module object, so its attributes (and monkeypatches) are shared
