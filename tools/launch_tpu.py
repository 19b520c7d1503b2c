"""Launch hat_jax on a Cloud TPU pod slice: the command line of `hat_jax.launch_tpu` (flags: --help).

  python tools/launch_tpu.py --tpu=my-v5p-64 --zone=us-east5-a --config=configs/hat.py:small \
      --workdir=gs://my-bucket/runs/hat_small --override=train.steps=20000 --dry-run
"""

import sys

from hat_jax import launch_tpu

if __name__ == "__main__":
  sys.exit(launch_tpu.main())
