"""hat_jax: hierarchical autoregressive transformers in JAX/Flax (see README.md)."""

import glob as _glob
import os as _os


def _leave_out_absent_tpu() -> None:
  """libtpu (which the test extra installs, for compiling ahead of time for TPU pods) initialises on every
  jax start and prints a screen of warnings on a machine without TPU chips. Where JAX_PLATFORMS is unset
  and this host has no TPU device nodes (/dev/accel* on v4/v5p, /dev/vfio/* on v5e/v6e), leave the TPU
  out (NVIDIA GPUs, /dev/nvidia*, and the CPU are found as before; a ROCm host, /dev/kfd, is left alone).
  Runs when hat_jax is imported, so every entry point (CLI, tools, experiments) gets it, before or after
  `import jax` (not after jax has started a backend). Compiling for a TPU topology does not need the TPU
  backend (hat_jax.topology)."""
  if "JAX_PLATFORMS" in _os.environ or any(_glob.glob(p) for p in ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/kfd")):
    return
  platforms = "cuda,cpu" if _glob.glob("/dev/nvidia[0-9]*") else "cpu"
  _os.environ["JAX_PLATFORMS"] = platforms
  import sys  # pylint: disable=g-import-not-at-top
  if "jax" in sys.modules:  # imported first (e.g. a script's `import jax`): its config read the env already
    sys.modules["jax"].config.update("jax_platforms", platforms)


_leave_out_absent_tpu()
