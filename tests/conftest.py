"""Test setup, before jax initialises its backends:

- 8 forced CPU devices (for the sharding tests);
- XLA's CPU backend at optimisation level 0: the suite is dominated by compiling many tiny programs,
  not running them, and level 0 compiles ~35% faster (LLVM passes only; float semantics unchanged);
- one persistent compilation cache per test run, shared by pytest-xdist's workers (the README's test
  command runs two), so a program compiled by one test (the same model init or step at the same shapes)
  is loaded, not recompiled, by the next, in either worker.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
# CPU by default so the suite means the same everywhere; `JAX_PLATFORMS=cuda,cpu pytest -m gpu` runs GPU tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
assert len(jax.devices("cpu")) == 8, f"expected 8 forced CPU devices, got {jax.devices('cpu')}"

# The process that makes the cache (the xdist controller, or a plain serial run) exports it before any
# worker starts, so workers inherit it, and it alone deletes it at exit.
_CACHE = os.environ.get("HAT_JAX_TEST_JIT_CACHE")
if _CACHE is None:
  _CACHE = os.environ["HAT_JAX_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="hat_jax_test_jit_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
# A size limit turns on jax's file lock around cache reads and writes: two workers may write one entry.
jax.config.update("jax_compilation_cache_max_size", 4 << 30)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
