import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re

import numpy as np
import pytest

from hat_jax import topology
from hat_jax.topology import HARDWARE, TopologySpec, devices, hardware_for_device_kind, hardware_spec, parse_topology

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")),
    reason="libtpu is not installed (pip install 'jax[tpu]'); TPU topologies cannot be described")

# name -> (generation, topology_name, chips per slice, chips_per_host_bounds)
NAMES = {
    "v4-8": ("v4", "v4:2x2x1", 4, (2, 2, 1)),
    "v4-16": ("v4", "v4:2x2x2", 8, (2, 2, 1)),
    "v4-32": ("v4", "v4:2x2x4", 16, (2, 2, 1)),
    "v4-64": ("v4", "v4:2x4x4", 32, (2, 2, 1)),
    "v4-128": ("v4", "v4:4x4x4", 64, (2, 2, 1)),
    "v4-1536": ("v4", "v4:8x8x12", 768, (2, 2, 1)),
    "v5p-8": ("v5p", "v5p:2x2x1", 4, (2, 2, 1)),
    "v5p-16": ("v5p", "v5p:2x2x2", 8, (2, 2, 1)),
    "v5p-32": ("v5p", "v5p:2x2x4", 16, (2, 2, 1)),
    "v5p-64": ("v5p", "v5p:2x4x4", 32, (2, 2, 1)),
    "v5p-128": ("v5p", "v5p:4x4x4", 64, (2, 2, 1)),
    "v5p-256": ("v5p", "v5p:4x4x8", 128, (2, 2, 1)),
    "v5p-384": ("v5p", "v5p:4x4x12", 192, (2, 2, 1)),  # a whole-cube count off the table: most cube-like
    "v5p-512": ("v5p", "v5p:4x8x8", 256, (2, 2, 1)),
    "v5p-1024": ("v5p", "v5p:8x8x8", 512, (2, 2, 1)),
    "v5p-2048": ("v5p", "v5p:8x8x16", 1024, (2, 2, 1)),
    "v5p-4096": ("v5p", "v5p:8x16x16", 2048, (2, 2, 1)),
    "v5p-8192": ("v5p", "v5p:16x16x16", 4096, (2, 2, 1)),
    "v5p-12288": ("v5p", "v5p:16x16x24", 6144, (2, 2, 1)),
    "v5litepod-1": ("v5e", "v5e:1x1", 1, (1, 1, 1)),
    "v5litepod-4": ("v5e", "v5e:2x2", 4, (2, 2, 1)),
    "v5litepod-8": ("v5e", "v5e:2x4", 8, (2, 4, 1)),
    "v5litepod-16": ("v5e", "v5e:4x4", 16, (2, 2, 1)),
    "v5litepod-32": ("v5e", "v5e:4x8", 32, (2, 2, 1)),
    "v5litepod-64": ("v5e", "v5e:8x8", 64, (2, 2, 1)),
    "v5litepod-128": ("v5e", "v5e:8x16", 128, (2, 2, 1)),
    "v5litepod-256": ("v5e", "v5e:16x16", 256, (2, 2, 1)),
    "v5e-256": ("v5e", "v5e:16x16", 256, (2, 2, 1)),
    "v6e-1": ("v6e", "v6e:1x1", 1, (1, 1, 1)),
    "v6e-4": ("v6e", "v6e:2x2", 4, (2, 2, 1)),
    "v6e-8": ("v6e", "v6e:2x4", 8, (2, 4, 1)),
    "v6e-16": ("v6e", "v6e:4x4", 16, (2, 2, 1)),
    "v6e-64": ("v6e", "v6e:8x8", 64, (2, 2, 1)),
    "v6e-256": ("v6e", "v6e:16x16", 256, (2, 2, 1)),
    # topology form
    "v5e:16x16": ("v5e", "v5e:16x16", 256, (2, 2, 1)),
    "v5e:2x4": ("v5e", "v5e:2x4", 8, (2, 4, 1)),
    "v5e:1x1": ("v5e", "v5e:1x1", 1, (1, 1, 1)),
    "v5p:4x4x8": ("v5p", "v5p:4x4x8", 128, (2, 2, 1)),
    "v5p:2x2x1": ("v5p", "v5p:2x2x1", 4, (2, 2, 1)),
    "v4:2x2x2": ("v4", "v4:2x2x2", 8, (2, 2, 1)),
    "v6e:4x4": ("v6e", "v6e:4x4", 16, (2, 2, 1)),
    "v5litepod:4x4": ("v5e", "v5e:4x4", 16, (2, 2, 1)),
    # case and space
    " V5P-128 ": ("v5p", "v5p:4x4x4", 64, (2, 2, 1)),
}


@pytest.mark.parametrize("name", list(NAMES))
def test_every_accepted_name_parses_to_its_grid_chips_and_hosts(name):
  gen, topo, chips, cphb = NAMES[name]
  spec = parse_topology(name)
  assert (spec.generation, spec.topology_name, spec.num_chips, spec.chips_per_host_bounds) == (gen, topo, chips, cphb)
  assert math.prod(spec.grid) == spec.chips_per_slice == chips and spec.num_slices == 1
  assert spec.hardware is HARDWARE[gen]
  assert spec.chip_config_name == ("megacore" if gen == "v4" else "default")
  assert spec.hosts_per_slice * spec.chips_per_host == chips


def test_accelerator_type_round_trips_and_counts_cores_for_v4_and_v5p():
  assert parse_topology("v5p-128").num_chips == 64  # 128 TensorCores, 2 per chip
  assert parse_topology("v4-32").num_chips == 16
  assert parse_topology("v5litepod-16").num_chips == 16  # v5e counts chips
  assert parse_topology("v6e-64").num_chips == 64
  assert parse_topology("v5p:4x4x4").accelerator_type == "v5p-128"
  assert parse_topology("v5e:4x4").accelerator_type == "v5litepod-16"
  for name in topology.accepted_names():
    assert parse_topology(name).accelerator_type == name


def test_hosts_follow_the_cloud_tpu_tables():
  # v5p page: 2x2x1 -> 1 host, 2x2x2 -> 2, 4x4x4 -> 16, 16x16x24 -> 1536 (4 chips per host).
  assert [parse_topology(n).hosts_per_slice for n in ("v5p-8", "v5p-16", "v5p-128", "v5p-12288")] == [1, 2, 16, 1536]
  # v5e/v6e: up to 8 chips on one host; multi-host slices have 4-chip VMs.
  assert [parse_topology(n).hosts_per_slice for n in ("v5litepod-1", "v5litepod-4", "v5litepod-8", "v5litepod-16",
                                                      "v6e-256")] == [1, 1, 1, 4, 64]


def test_num_slices_multiplies_chips_and_hosts():
  spec = parse_topology("v5p-128", num_slices=4)
  assert (spec.num_slices, spec.num_chips, spec.chips_per_slice, spec.num_hosts) == (4, 256, 64, 64)
  assert spec.topology_name == "v5p:4x4x4"  # per slice


def test_specs_are_frozen():
  spec = parse_topology("v5e-16")
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.num_chips = 3  # type: ignore[misc]


@pytest.mark.parametrize("name, pattern", [
    ("", r"empty TPU name.*v5p-128.*v5e:16x16"),
    ("v5p128", r"malformed TPU name 'v5p128'.*Accepted:.*<generation>-<N>.*<generation>:<chip grid>"),
    ("v5p-", r"malformed"),
    ("v5p:4x", r"malformed"),
    ("v5p 128", r"malformed"),
    ("v7-8", r"unknown TPU generation 'v7'.*known: v4, v5e, v5p, v6e"),
    ("v3-8", r"unknown TPU generation 'v3'"),
    ("h100-8", r"unknown TPU generation 'h100'"),
    ("v5p-96", r"no v5p slice has 48 chips.*counts TensorCores.*v5p-8, v5p-16.*v5p-12288"),
    ("v5p-7", r"must be even"),
    ("v4-20000", r"no v4 slice has 10000 chips"),
    ("v5e-12", r"no v5e slice has 12 chips.*counts chips.*v5litepod-1, v5litepod-4, v5litepod-8, v5litepod-16"),
    ("v6e-512", r"no v6e slice has 512 chips"),
    ("v5e:3x3", r"v5e slices are 2-D chip grids, one of 1x1, 2x2, 2x4, 4x4"),
    ("v5e:2x2x2", r"2-D chip grids"),
    ("v5p:4x4", r"3-D chip grids"),
    ("v5p:2x2x3", r"3-D chip grids"),
    ("v5p:1x2x2", r"3-D chip grids"),  # would not tile into 2x2x1 hosts
    ("v5p:32x32x32", r"32768 chips; the largest v5p slice has 6144.*num_slices"),
])
def test_bad_names_raise_value_errors_that_say_what_is_accepted(name, pattern):
  with pytest.raises(ValueError, match=re.compile(pattern, re.S)):
    parse_topology(name)


@pytest.mark.parametrize("num_slices", [0, -1, 1.5, True, "2"])
def test_bad_num_slices(num_slices):
  with pytest.raises(ValueError, match="num_slices must be an integer >= 1"):
    parse_topology("v5p-8", num_slices)


# ------------------------------------------------------------------------------------------------------
# Hardware.

def test_hardware_table_and_lookup_by_device_kind():
  assert {g: (hw.peak_flops, hw.hbm_bytes / 2**30, hw.hbm_bandwidth) for g, hw in HARDWARE.items()} == {
      "v4": (275e12, 32, 1200e9), "v5e": (197e12, 16, 819e9), "v5p": (459e12, 95, 2765e9),
      "v6e": (918e12, 32, 1638e9)}
  for hw in HARDWARE.values():
    assert hw.source.startswith("https://cloud.google.com/tpu/docs/") and hw.peak_bf16_flops == hw.peak_flops
  kinds = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
           "TPU v6 lite": "v6e", "tpu v6e ": "v6e"}
  for kind, gen in kinds.items():
    assert hardware_for_device_kind(kind).generation == gen, kind
  for kind in ("cpu", "NVIDIA H100 80GB HBM3", "TPU v3", "TPU7x", ""):
    assert hardware_for_device_kind(kind) is None
  assert hardware_spec("v5litepod") is HARDWARE["v5e"]
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'; known: v4, v5e, v5p, v6e"):
    hardware_spec("v9")


def test_trainer_peak_flops_come_from_this_table():
  from hat_jax.train.metrics import device_peak_flops
  for hw in HARDWARE.values():
    for kind in hw.device_kinds:
      assert device_peak_flops(kind) == (hw.peak_flops, hw.source), kind
  assert device_peak_flops("TPU v5e")[0] == 197e12  # exact match: not v5p's 459e12 by substring
  assert device_peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12 and device_peak_flops("cpu") is None


# ------------------------------------------------------------------------------------------------------
# Devices (libtpu, no TPU).

@needs_libtpu
@pytest.mark.parametrize("name, num_slices, kind, hosts", [
    ("v5p-8", 1, "TPU v5", 1),
    ("v5p-128", 1, "TPU v5", 16),  # multi-host: 16 hosts of 2x2x1 chips
    ("v5litepod-8", 1, "TPU v5 lite", 1),  # one 8-chip host
    ("v5e:16x16", 1, "TPU v5 lite", 64),
    ("v5litepod-1", 1, "TPU v5 lite", 1),
    ("v4-32", 1, "TPU v4", 4),  # megacore: one device per chip, not per TensorCore
    ("v6e-16", 1, "TPU v6 lite", 4),
    ("v5p-16", 2, "TPU v5", 4),  # multi-slice
    ("v5litepod-16", 3, "TPU v5 lite", 12),
])
def test_devices_exist_one_per_chip_with_platform_kind_and_hosts(name, num_slices, kind, hosts):
  spec = parse_topology(name, num_slices)
  devs = devices(spec)
  assert len(devs) == spec.num_chips == len({d.id for d in devs})
  assert {d.platform for d in devs} == {"tpu"} and {d.device_kind for d in devs} == {kind}
  assert hardware_for_device_kind(kind) is spec.hardware
  assert len({d.process_index for d in devs}) == hosts == spec.num_hosts
  if num_slices > 1:
    per_slice = {}
    for d in devs:
      per_slice[d.slice_index] = per_slice.get(d.slice_index, 0) + 1
    assert per_slice == {s: spec.chips_per_slice for s in range(num_slices)}
  else:
    assert not hasattr(devs[0], "slice_index")


@needs_libtpu
def test_devices_accepts_a_name_and_the_cpu_backend_stays_default():
  import jax
  assert len(devices("v6e:2x2")) == 4
  assert jax.devices()[0].platform == "cpu" and len(jax.devices()) == 8


@needs_libtpu
def test_a_multi_slice_mesh_compiles_for_tpu():
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  spec = parse_topology("v5litepod-4", num_slices=2)
  mesh = Mesh(np.array(devices(spec)).reshape(spec.num_slices, -1), ("dcn", "ici"))
  x = jax.ShapeDtypeStruct((64, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P(("dcn", "ici"))))
  w = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "ici")))
  compiled = jax.jit(lambda x, w: jnp.tanh(x @ w).sum()).lower(x, w).compile()
  assert "tpu" in compiled.as_text().lower() or compiled.memory_analysis() is not None


@needs_libtpu
def test_libtpu_rejecting_a_topology_is_a_value_error_with_the_accepted_names():
  spec = dataclasses.replace(parse_topology("v5e-16"), topology_name="v5e:3x3")  # bypasses parse_topology's check
  with pytest.raises(ValueError, match=r"get_topology_desc failed for 'v5e-16'.*v5e:3x3.*v5litepod-16.*jax\[tpu\]=="):
    devices(spec)


def test_missing_libtpu_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(topology, "_libtpu_available", lambda: False)
  version = importlib.metadata.version("jax")
  with pytest.raises(ValueError, match=re.escape(f"libtpu is not installed") + ".*" +
                     re.escape(f"pip install 'jax[tpu]=={version}'")):
    devices(parse_topology("v5p-8"))


def test_errors_from_get_topology_desc_become_value_errors(monkeypatch):
  from jax.experimental import topologies

  def fail(message):
    def get_topology_desc(**kwargs):
      raise RuntimeError(message)
    return get_topology_desc

  monkeypatch.setattr(topology, "_libtpu_available", lambda: True)
  monkeypatch.setattr(topologies, "get_topology_desc", fail("JAX TPU support not installed; cannot generate"))
  with pytest.raises(ValueError, match=r"not installed.*Install or repair libtpu: pip install 'jax\[tpu\]=="):
    devices(parse_topology("v5p-8"))
  monkeypatch.setattr(topologies, "get_topology_desc", fail("ABORTED: Internal error when accessing libtpu "
                                                            "multi-process lockfile."))
  with pytest.raises(ValueError, match="ALLOW_MULTIPLE_LIBTPU_LOAD=1"):
    devices(parse_topology("v5p-8"))
  monkeypatch.setattr(topologies, "get_topology_desc", fail("INVALID_ARGUMENT: Invalid TPU external name"))
  with pytest.raises(ValueError, match=r"Invalid TPU external name.*accepted names \(v5p-8, v5p-16"):
    devices(parse_topology("v5p-8"))


def test_topology_spec_is_what_get_topology_desc_is_called_with(monkeypatch):
  from jax.experimental import topologies
  calls = []

  class Desc:
    devices = list(range(8))

  monkeypatch.setattr(topology, "_libtpu_available", lambda: True)
  monkeypatch.setattr(topologies, "get_topology_desc", lambda **kw: calls.append(kw) or Desc())
  assert devices(parse_topology("v4-8", num_slices=2)) == list(range(8))
  assert calls == [dict(platform="tpu", topology_name="v4:2x2x1", chip_config_name="megacore",
                        chips_per_host_bounds=(2, 2, 1), num_slices=2)]
  assert isinstance(parse_topology("v4-8"), TopologySpec)
