"""TPU slices by the names people type, as real TPU device descriptions, plus per-chip hardware specs.

  spec = parse_topology("v5p-128", num_slices=2)   # or "v5p:4x4x4"; v5e/v6e: "v5litepod-16", "v5e:4x4"
  devs = devices(spec)                              # 2 x 64 compile-only "TPU v5" devices
  mesh = jax.sharding.Mesh(np.array(devs).reshape(2, -1), ("dcn", "ici"))
  jax.jit(f).lower(...).compile()                   # runs XLA's TPU compiler on this (CPU) host

Two name forms are accepted (case-insensitive):

- Cloud TPU accelerator types, `<generation>-<N>`: `v4-32`, `v5p-128`, `v5litepod-16` (also `v5e-16`),
  `v6e-64`. For v4 and v5p N counts TensorCores, two per chip (v5p-128 = 64 chips); for v5e and v6e N
  counts chips. The chip grid is the one Cloud TPU gives that accelerator type (tables below).
- Topologies, `<generation>:<grid>`: `v4:2x2x2`, `v5p:4x4x8`, `v5e:16x16`, `v6e:4x4` (the form
  `jax.experimental.topologies.get_topology_desc` takes), with grids in chips.

Chip grids, from the Cloud TPU docs:

- v5p (https://cloud.google.com/tpu/docs/v5p, "Configurations": topology, cores, chips, hosts):
  2x2x1 (v5p-8, 1 host), 2x2x2, 2x4x4, 4x4x4 (one cube), 4x4x8, 4x8x8, 8x8x8, 8x8x16, 8x16x16, 16x16x16,
  16x16x24 (v5p-12288, the largest single slice); 4 chips per host. The page lists v5p-32 among the
  accelerator types but no 16-chip row; 2x2x4 is the grid Google's xpk (`system_characteristics.py`)
  gives it, and xpk also lists 8x8x12 (768 chips).
- v4 (https://cloud.google.com/tpu/docs/v4; https://cloud.google.com/tpu/docs/types-topologies: v4-128
  means 128 TensorCores, 2x2x4 is 16 chips of 2 TensorCores, and v4 grids AxBxC have A<=B<=C with every
  side <= 4 or a multiple of 4): the same grids as v5p, up to the v4 Pod's 4096 chips; 4 chips per host.
- Other v4/v5p chip counts that are whole 4x4x4 cubes get the grid most like a cube, every side a
  multiple of 4 (types-topologies, "Topology variants": the default topology for a chip count is the one
  most like a cube): v5p-384 = 4x4x12.
- v5e (https://cloud.google.com/tpu/docs/v5e, "supports the following 2D slice shapes") and v6e
  (https://cloud.google.com/tpu/docs/v6e; the same 256-chip 2D-torus Pod): 1x1, 2x2, 2x4, 4x4, 4x8, 8x8,
  8x16, 16x16.

`chips_per_host_bounds` (how chips split over hosts, i.e. what `process_index` each device reports)
was found by experiment against libtpu 0.0.42 (jax 0.10.2): get_topology_desc accepts any bounds that
divide the grid, and by default uses 2x2x1 (4 chips a host), which rejects 1x1. Chosen here:
- v4/v5p: 2x2x1 (v5p page: 4-chip VMs; v4: ct4p-hightpu-4t, 4 chips, in xpk).
- v5e/v6e: 1x1 -> 1x1x1, 2x2 -> 2x2x1, 2x4 -> 2x4x1 (single-host slices: v5litepod-8 / v6e-8 are one
  8-chip VM); 4x4 and up -> 2x2x1 (multi-host slices run 4-chip VMs: ct5lp-hightpu-4t /
  ct6e-standard-4t in xpk, and libtpu's default). The v5e page's "Number of hosts" column counts 8-chip
  physical hosts (it says 2 for 4x4), not VMs.

Findings about get_topology_desc that this module works around (libtpu 0.0.42):

- v4 with chip_config_name="default" gives one device per TensorCore (8 devices for 2x2x1); a real v4
  VM shows JAX one device per chip (megacore), which is chip_config_name="megacore". v5p's "default"
  is already one device per chip; v5e/v6e have no "megacore" config (an error).
- libtpu checks neither the grid against what Cloud TPU sells (v5e:3x3 and v5p:2x2x3 give devices) nor
  num_slices (0 gives one slice), so parse_topology does.
- Multi-slice devices are `MegaScalePjRtDevice`s with `slice_index` (absent on single-slice devices),
  ids 100000 * (slice + 1) + i, and process indices numbered on across slices.
- Loading libtpu takes an exclusive lock on /tmp/libtpu_lockfile for the process's life, so a second
  process (a pytest-xdist worker, a colleague's script) fails with "ABORTED: Internal error when
  accessing libtpu multi-process lockfile". Compiling for a described topology touches no TPU, so
  `devices()` sets ALLOW_MULTIPLE_LIBTPU_LOAD=1 (libtpu's own switch) when this host has no TPU.
- Device kinds: "TPU v4", "TPU v5" (v5p), "TPU v5 lite" (v5e), "TPU v6 lite" (v6e).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import importlib.util
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
  """One TPU chip, from its Cloud TPU docs page (`source`).

  Attribute names match `hat_jax.aot.Hardware` (hbm_bytes, peak_flops, hbm_bandwidth), so a spec can be
  passed where that is expected. HBM capacities the pages give in "GB" are binary (the v5p page says
  GiB outright: 95 GiB usable of 96 GiB physical); bandwidths are decimal (1 GBps = 1e9 bytes/s).
  """

  generation: str
  # Device.device_kind strings: first what topology devices report, then the aliases JAX's own table
  # accepts (jax._src.pallas.mosaic.tpu_info.chip_version_from_device_kind).
  device_kinds: tuple[str, ...]
  hbm_bytes: float  # per chip
  peak_flops: float  # dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  ici_bandwidth: float | None  # bidirectional inter-chip interconnect bytes/s per chip; None: not documented
  tensorcores_per_chip: int
  source: str
  notes: str = ""

  @property
  def peak_bf16_flops(self) -> float:
    return self.peak_flops


# The trainer's MFU peak for TPUs (hat_jax.train.metrics.device_peak_flops) reads this table.
HARDWARE: dict[str, HardwareSpec] = {
    "v4": HardwareSpec(
        generation="v4", device_kinds=("TPU v4",), hbm_bytes=32 * GiB, peak_flops=275e12,
        hbm_bandwidth=1200e9, ici_bandwidth=None, tensorcores_per_chip=2,
        source="https://cloud.google.com/tpu/docs/v4",
        notes="page: peak 275 TFLOPs (bf16 or int8), HBM2 32 GiB at 1200 GBps; it gives no per-chip ICI "
              "bandwidth (only per-Pod all-reduce 1.1 PB/s and bisection 24 TB/s)"),
    "v5e": HardwareSpec(
        generation="v5e", device_kinds=("TPU v5 lite", "TPU v5e"), hbm_bytes=16 * GiB, peak_flops=197e12,
        hbm_bandwidth=819e9, ici_bandwidth=400e9, tensorcores_per_chip=1,
        source="https://cloud.google.com/tpu/docs/v5e",
        notes="page: peak 197 TFLOPs bf16, HBM2 16 GB at 819 GBps, bidirectional ICI 400 GBps per chip "
              "(older revisions: 'interchip interconnect BW 1600 Gbps', i.e. 200 GB/s one way; one revision gives HBM "
              "bandwidth as '800 GiBps')"),
    "v5p": HardwareSpec(
        generation="v5p", device_kinds=("TPU v5", "TPU v5p"), hbm_bytes=95 * GiB, peak_flops=459e12,
        hbm_bandwidth=2765e9, ici_bandwidth=1200e9, tensorcores_per_chip=2,
        source="https://cloud.google.com/tpu/docs/v5p",
        notes="page: peak 459 TFLOPs bf16, HBM2e 95 GiB (of 96 GiB physical; the rest is reserved by the "
              "TPU runtime) at 2765 GBps, bidirectional ICI 1200 GBps per chip (older revisions: "
              "'4800 Gbps')"),
    "v6e": HardwareSpec(
        generation="v6e", device_kinds=("TPU v6 lite", "TPU v6e"), hbm_bytes=32 * GiB, peak_flops=918e12,
        hbm_bandwidth=1638e9, ici_bandwidth=800e9, tensorcores_per_chip=1,
        source="https://cloud.google.com/tpu/docs/v6e",
        notes="page: peak 918 TFLOPs bf16, HBM 32 GB at 1638 GBps, bidirectional ICI 800 GBps per chip"),
}

_DEVICE_KIND_TO_GENERATION = {kind.lower(): gen for gen, hw in HARDWARE.items() for kind in hw.device_kinds}


def hardware_spec(generation: str) -> HardwareSpec:
  """The HardwareSpec of a generation ("v4", "v5e", "v5p", "v6e"; aliases such as "v5litepod" too)."""
  gen = _GENERATION_ALIASES.get(str(generation).strip().lower())
  if gen is None:
    raise ValueError(f"unknown TPU generation {generation!r}; known: {', '.join(sorted(HARDWARE))} "
                     f"(aliases: {', '.join(sorted(a for a in _GENERATION_ALIASES if a not in HARDWARE))}).")
  return HARDWARE[gen]


def hardware_for_device_kind(device_kind: str) -> HardwareSpec | None:
  """The HardwareSpec for a jax `Device.device_kind` ("TPU v5 lite", "TPU v5", ...); None if not a known TPU
  (e.g. "cpu", a GPU, or a TPU generation not described here). The match is exact (case and surrounding
  space aside): "TPU v5" is v5p, "TPU v5 lite" is v5e."""
  gen = _DEVICE_KIND_TO_GENERATION.get(str(device_kind).strip().lower())
  return HARDWARE[gen] if gen else None


# ------------------------------------------------------------------------------------------------------
# Names.

_GENERATION_ALIASES = {
    "v4": "v4",
    "v5p": "v5p",
    "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e",
    "v6e": "v6e",
}
# Accelerator-type prefix Cloud TPU uses, and whether its number counts TensorCores (else chips).
_ACCELERATOR_PREFIX = {"v4": "v4", "v5p": "v5p", "v5e": "v5litepod", "v6e": "v6e"}
_COUNTS_CORES = {"v4": True, "v5p": True, "v5e": False, "v6e": False}
# Largest single slice, in chips: v4 Pod 4096 chips (v4 page); v5p "maximum shape 16x16x24 (6144
# chips)" (v5p page); v5e / v6e Pod 256 chips.
_MAX_CHIPS = {"v4": 4096, "v5p": 6144, "v5e": 256, "v6e": 256}

# Chips -> grid for the sizes the docs tabulate (see the module docstring for the sources).
_GRIDS_3D = {
    4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
    256: (4, 8, 8), 512: (8, 8, 8), 768: (8, 8, 12), 1024: (8, 8, 16), 2048: (8, 16, 16),
    4096: (16, 16, 16), 6144: (16, 16, 24),
}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}

_ACCEL_RE = re.compile(r"^([a-z0-9]+)-(\d+)$")
_TOPO_RE = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+)+)$")


@dataclasses.dataclass(frozen=True)
class TopologySpec:
  """A TPU slice (or `num_slices` identical slices), as `get_topology_desc` wants it."""

  name: str  # as typed (stripped)
  generation: str  # "v4" | "v5e" | "v5p" | "v6e"
  topology_name: str  # for get_topology_desc, e.g. "v5p:4x4x4"
  chips_per_host_bounds: tuple[int, int, int]
  num_slices: int
  num_chips: int  # total, over all slices
  hardware: HardwareSpec
  grid: tuple[int, ...]  # chips per dimension of one slice
  chip_config_name: str = "default"  # "megacore" for v4: one device per chip, as JAX sees a real v4

  @property
  def chips_per_slice(self) -> int:
    return self.num_chips // self.num_slices

  @property
  def chips_per_host(self) -> int:
    return math.prod(self.chips_per_host_bounds)

  @property
  def hosts_per_slice(self) -> int:
    return self.chips_per_slice // self.chips_per_host

  @property
  def num_hosts(self) -> int:
    return self.hosts_per_slice * self.num_slices

  @property
  def accelerator_type(self) -> str:
    """The Cloud TPU accelerator type of one slice, e.g. "v5p-128", "v5litepod-16"."""
    per_chip = self.hardware.tensorcores_per_chip if _COUNTS_CORES[self.generation] else 1
    return f"{_ACCELERATOR_PREFIX[self.generation]}-{self.chips_per_slice * per_chip}"


def accepted_names(generation: str | None = None) -> list[str]:
  """The accelerator-type names with a tabulated grid (others that are whole v4/v5p cubes work too)."""
  gens = [hardware_spec(generation).generation] if generation else sorted(HARDWARE)
  names = []
  for gen in gens:
    table = _GRIDS_2D if gen in ("v5e", "v6e") else _GRIDS_3D
    mult = 2 if _COUNTS_CORES[gen] else 1
    names += [f"{_ACCELERATOR_PREFIX[gen]}-{chips * mult}" for chips in sorted(table) if chips <= _MAX_CHIPS[gen]]
  return names


def _forms_help() -> str:
  return ("Accepted: Cloud TPU accelerator types <generation>-<N> (v4 and v5p: N = TensorCores, 2 per chip; "
          "v5e/v5litepod and v6e: N = chips), e.g. v4-32, v5p-128, v5litepod-16, v5e-256, v6e-64; or "
          "topologies <generation>:<chip grid>, e.g. v4:2x2x2, v5p:4x4x8, v5e:16x16, v6e:4x4. Generations: "
          f"{', '.join(sorted(HARDWARE))}.")


def _valid_grid_3d(grid: tuple[int, ...]) -> bool:
  """Cloud TPU v4/v5p slice grids: 2x2x1, 2x2x2, 2x2x4, 2x4x4 below a 4x4x4 cube (in any order that keeps
  the first two sides even, so 2x2x1 hosts tile it), else every side a multiple of 4 (types-topologies)."""
  if len(grid) != 3 or min(grid) < 1:
    return False
  small = {(1, 2, 2), (2, 2, 2), (2, 2, 4), (2, 4, 4)}
  if tuple(sorted(grid)) in small:
    return grid[0] % 2 == 0 and grid[1] % 2 == 0
  return all(d % 4 == 0 for d in grid)


def _near_cube(chips: int) -> tuple[int, int, int] | None:
  """The A<=B<=C grid with sides multiples of 4 and product `chips` that is most like a cube."""
  best = None
  for a in range(4, chips + 1, 4):
    for b in range(a, chips // a + 1, 4):
      if chips % (a * b):
        continue
      c = chips // (a * b)
      if c < b or c % 4:
        continue
      key = (c, c - a)  # smallest longest side, then smallest spread
      if best is None or key < best[0]:
        best = (key, (a, b, c))
  return best[1] if best else None


def _grid_for_chips(gen: str, chips: int, name: str) -> tuple[int, ...]:
  if gen in ("v5e", "v6e"):
    grid = _GRIDS_2D.get(chips)
  else:
    grid = _GRIDS_3D.get(chips) if chips <= _MAX_CHIPS[gen] else None
    if grid is None and chips <= _MAX_CHIPS[gen] and chips % 64 == 0:
      grid = _near_cube(chips)
  if grid is None:
    unit = "TensorCores (2 per chip)" if _COUNTS_CORES[gen] else "chips"
    raise ValueError(
        f"TPU name {name!r}: no {gen} slice has {chips} chips. The number after '-' counts {unit}; "
        f"accepted {gen} names: {', '.join(accepted_names(gen))}"
        + (f" (and any other multiple of 128 TensorCores, i.e. whole 4x4x4 cubes, up to "
           f"{_ACCELERATOR_PREFIX[gen]}-{_MAX_CHIPS[gen] * 2})" if gen in ("v4", "v5p") else "")
        + f". Or give the chip grid: {gen}:<grid>.")
  return grid


def _chips_per_host_bounds(gen: str, grid: tuple[int, ...]) -> tuple[int, int, int]:
  chips = math.prod(grid)
  if gen in ("v5e", "v6e"):
    if chips == 1:
      return (1, 1, 1)
    if chips == 8:
      return (2, 4, 1)  # a single 8-chip host (v5litepod-8 / v6e-8); grid 2x4
  return (2, 2, 1)


def parse_topology(name: str, num_slices: int = 1) -> TopologySpec:
  """A TopologySpec from "v5p-128" / "v5litepod-16" / "v5e-256" / "v4-32" / "v6e-64" (accelerator types) or
  "v5p:4x4x8" / "v5e:16x16" / "v4:2x2x2" / "v6e:4x4" (topologies); `num_slices` identical slices.

  Raises ValueError naming what is wrong and what is accepted: malformed names, unknown generations,
  chip counts or grids that no Cloud TPU slice of that generation has, num_slices < 1.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"empty TPU name {name!r}. {_forms_help()}")
  if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
    raise ValueError(f"num_slices must be an integer >= 1, got {num_slices!r}.")
  typed = name.strip()
  text = typed.lower()
  accel, topo = _ACCEL_RE.match(text), _TOPO_RE.match(text)
  if not (accel or topo):
    raise ValueError(f"malformed TPU name {typed!r}. {_forms_help()}")
  prefix = (accel or topo).group(1)
  gen = _GENERATION_ALIASES.get(prefix)
  if gen is None:
    raise ValueError(
        f"unknown TPU generation {prefix!r} in {typed!r}; known: {', '.join(sorted(HARDWARE))} (v5e is also "
        f"'v5litepod'). {_forms_help()}")

  if accel:
    n = int(accel.group(2))
    if _COUNTS_CORES[gen]:
      if n % 2:
        raise ValueError(f"TPU name {typed!r}: {gen} accelerator types count TensorCores, 2 per chip, so the "
                         f"number must be even; accepted {gen} names: {', '.join(accepted_names(gen))}.")
      chips = n // 2
    else:
      chips = n
    grid = _grid_for_chips(gen, chips, typed)
  else:
    grid = tuple(int(d) for d in topo.group(2).split("x"))
    if gen in ("v5e", "v6e"):
      if len(grid) == 3 and grid[2] == 1:
        grid = grid[:2]
      if grid not in _GRIDS_2D.values():
        raise ValueError(
            f"TPU topology {typed!r}: {gen} slices are 2-D chip grids, one of "
            f"{', '.join('x'.join(map(str, g)) for g in _GRIDS_2D.values())} ({gen} docs).")
    else:
      if not _valid_grid_3d(grid):
        raise ValueError(
            f"TPU topology {typed!r}: {gen} slices are 3-D chip grids AxBxC: 2x2x1, 2x2x2, 2x2x4, 2x4x4, "
            f"or every side a multiple of 4 (4x4x4, 4x4x8, 4x8x8, 8x8x8, ...).")
      if math.prod(grid) > _MAX_CHIPS[gen]:
        raise ValueError(f"TPU topology {typed!r} has {math.prod(grid)} chips; the largest {gen} slice has "
                         f"{_MAX_CHIPS[gen]}. Use num_slices for more.")
  per_slice = math.prod(grid)
  return TopologySpec(
      name=typed, generation=gen, topology_name=f"{gen}:{'x'.join(map(str, grid))}",
      chips_per_host_bounds=_chips_per_host_bounds(gen, grid), num_slices=num_slices,
      num_chips=per_slice * num_slices, hardware=HARDWARE[gen], grid=grid,
      chip_config_name="megacore" if gen == "v4" else "default")


# ------------------------------------------------------------------------------------------------------
# Devices.

def _jax_version() -> str:
  try:
    return importlib.metadata.version("jax")
  except importlib.metadata.PackageNotFoundError:
    return "<your jax version>"


def _install_hint() -> str:
  return f"pip install 'jax[tpu]=={_jax_version()}'"


def _libtpu_available() -> bool:
  path = os.environ.get("TPU_LIBRARY_PATH")
  return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def _host_has_tpu() -> bool:
  return bool(glob.glob("/dev/accel*")) or os.path.isdir("/dev/vfio")


def devices(spec: TopologySpec | str) -> list:
  """The compile-only TPU devices of `spec` (a TopologySpec, or a name for parse_topology with one slice):
  one per chip, slice after slice, with device_kind, coords, process_index and (num_slices > 1)
  slice_index set.

  Needs libtpu (`jax[tpu]`), not a TPU. Raises ValueError when libtpu is missing or rejects the topology.
  """
  if not isinstance(spec, TopologySpec):
    spec = parse_topology(spec)
  if not _libtpu_available():
    raise ValueError(
        f"cannot describe TPU topology {spec.topology_name!r} ({spec.name}): libtpu is not installed (the "
        f"'libtpu' package, or TPU_LIBRARY_PATH pointing at libtpu.so). No TPU is needed, only the library: "
        f"{_install_hint()}")
  if not _host_has_tpu():
    # libtpu otherwise holds /tmp/libtpu_lockfile for the process's life and a second process fails.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top  # lazily: loads libtpu

  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=spec.topology_name, chip_config_name=spec.chip_config_name,
        chips_per_host_bounds=spec.chips_per_host_bounds, num_slices=spec.num_slices)
  except Exception as e:  # pylint: disable=broad-except  # JaxRuntimeError, RuntimeError: re-raised with context
    msg = str(e)
    if "lockfile" in msg:
      fix = ("Another process holds libtpu's lock (/tmp/libtpu_lockfile): set ALLOW_MULTIPLE_LIBTPU_LOAD=1 "
             "before jax loads libtpu, or wait for that process")
    elif "not installed" in msg or "libtpu" in msg.lower():
      fix = f"Install or repair libtpu: {_install_hint()}"
    else:
      fix = (f"Use one of the accepted names ({', '.join(accepted_names(spec.generation))}, or "
             f"{spec.generation}:<grid>); if the name is right, this libtpu may not know it: {_install_hint()}")
    raise ValueError(
        f"get_topology_desc failed for {spec.name!r} (topology_name={spec.topology_name!r}, "
        f"chips_per_host_bounds={spec.chips_per_host_bounds}, num_slices={spec.num_slices}, "
        f"chip_config_name={spec.chip_config_name!r}): {msg.strip()}. {fix}.") from e
  devs = list(desc.devices)
  if len(devs) != spec.num_chips:
    raise ValueError(f"get_topology_desc returned {len(devs)} devices for {spec.topology_name!r} x "
                     f"{spec.num_slices} slices; expected one per chip, {spec.num_chips}.")
  return devs
