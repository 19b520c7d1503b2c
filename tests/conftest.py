"""Test setup: 8 forced CPU devices (for sharding tests) before jax initialises its backends."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# CPU by default so the suite means the same everywhere; `JAX_PLATFORMS=cuda,cpu pytest -m gpu` runs GPU tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
assert len(jax.devices("cpu")) == 8, f"expected 8 forced CPU devices, got {jax.devices('cpu')}"
