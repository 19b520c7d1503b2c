"""The parts of `hat_jax.aot` that need no TPU: estimates, out-of-memory parsing, decode-argument shardings."""

import jax
import jax.numpy as jnp
import pytest

from configs import common, hat
from hat_jax import aot, sharding
from hat_jax.models.layers import KVCache, StackConfig, empty_caches
from hat_jax.train import flops as flops_lib


def test_hardware_flops_add_one_forward_per_fully_rematerialised_stack():
  config = hat.get_config("test,corpus=toy")
  counts = flops_lib.training_flops(config)
  assert aot.train_flops(config, None) == (counts["train"], counts["train"])
  config.model.backbone.remat = "full"
  config.model.decoder.remat = "save_dots"  # keeps matmuls: nothing recomputed in this count
  model, hardware = aot.train_flops(config, None)
  assert model == counts["train"] and hardware == counts["train"] + counts["forward/backbone"]
  config.task = "axial"  # no formula: no estimate, not a crash
  assert aot.train_flops(config, None) == (None, None)


def test_roofline_estimate_and_implied_mfu():
  class Compiled:
    def as_text(self):
      return 'x = custom_call(), custom_call_target="tpu_custom_call" y custom_call_target="tpu_custom_call"'

    def memory_analysis(self):
      return type("S", (), dict(argument_size_in_bytes=4e9, output_size_in_bytes=4e9, alias_size_in_bytes=4e9,
                                temp_size_in_bytes=10e9, generated_code_size_in_bytes=0))()

    def cost_analysis(self):
      return {"flops": 1e12, "bytes accessed": 2e12}

  report = aot.StepReport("train", True, 1.0)
  hw = aot.Hardware(hbm_bytes=16e9, peak_flops=100e12, hbm_bandwidth=1e12)
  aot._analyse(report, Compiled(), hw, model_flops=150e12, hardware_flops=200e12)
  assert report.kernel_calls == 2
  assert report.peak_bytes == 14e9 and report.fits  # 4 + 4 - 4 aliased + 10
  assert report.estimated_seconds == pytest.approx(2.0)  # compute-bound: 200 TFLOP at 100 TFLOP/s (HBM: 2 s too)
  assert report.implied_mfu == pytest.approx(0.75)  # model / (time x peak): remat is not useful work
  hw_small = aot.Hardware(hbm_bytes=8e9, peak_flops=100e12, hbm_bandwidth=0.5e12)
  aot._analyse(report, Compiled(), hw_small, model_flops=150e12, hardware_flops=200e12)
  assert not report.fits and report.estimated_seconds == pytest.approx(4.0)  # HBM-bound now


def test_xla_out_of_memory_message_is_parsed():
  m = aot._OUT_OF_MEMORY.search("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                                "temporaries (96.70G) exceeds available HBM (15.75G).")
  assert aot._parse_bytes(m.group(1)) == pytest.approx(96.70 * 2**30)
  assert aot._parse_bytes(m.group(2)) == pytest.approx(15.75 * 2**30)


def test_decode_arguments_are_sharded_by_their_logical_axes():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = sharding.logical_rules(common.default_rules())
  cfg = StackConfig(d_model=16, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=32, scan=True)
  caches = jax.eval_shape(lambda: empty_caches(cfg, 4, 8))
  args = (caches, jax.ShapeDtypeStruct((4, 1), jnp.int32), jax.ShapeDtypeStruct((3, 1), jnp.int32))
  shardings = aot.arg_shardings(args, mesh, rules)
  assert isinstance(shardings[0], KVCache)
  assert shardings[0].k.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"), "tensor", None, None)
  assert shardings[0].length.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
  assert shardings[1].spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  assert shardings[2].spec == jax.sharding.PartitionSpec(None, None)  # 3 rows do not split: replicated
