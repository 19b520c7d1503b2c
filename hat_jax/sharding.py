"""Device mesh, logical-axis rules and sharded state creation.

One vocabulary shards everything: model code names array dimensions with *logical* names
(`nn.with_logical_partitioning` on params, `nn.with_logical_constraint` on activations), and
`config.logical_axis_rules` maps those names onto the mesh axes `data`, `fsdp`, `tensor`. Nothing
else in the codebase mentions mesh axes.

Flow (MaxText / flax lm1b style, never materialising unsharded state on one device):
  abstract = jax.eval_shape(init_fn, rng)                   # boxed, no memory
  shardings = state_shardings(abstract, mesh, rules)        # validated logical names -> NamedSharding
  state = jax.jit(unboxed(init_fn), out_shardings=shardings)(rng)

Logical names carry a rule each (even if it maps to None = replicated). A param whose logical name
has no rule is an error: flax would silently replicate it, which at scale means an out-of-memory
crash far from the cause.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from absl import logging
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Resolve `config.mesh` sizes (one may be -1 = the rest) against `num_devices`.

  `mesh_config` has `data`, `fsdp`, `tensor` (per-slice sizes) and optionally `dcn_data`,
  `dcn_fsdp`, `dcn_tensor` (sizes across slices, multiplied in). Returns the total size per axis.
  """
  cfg = dict(mesh_config)
  unknown = sorted(set(cfg) - set(MESH_AXES) - {f"dcn_{a}" for a in MESH_AXES} - {"indivisible"})
  if unknown:
    raise ValueError(f"Unknown config.mesh fields {unknown}; expected {list(MESH_AXES)} "
                     f"(and optionally dcn_* for multi-slice, `indivisible`).")
  sizes = [int(cfg.get(a, 1)) for a in MESH_AXES]
  dcn = [int(cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES]
  if any(d < 1 for d in dcn):
    raise ValueError(f"config.mesh dcn_* sizes must be >= 1, got {dict(zip(MESH_AXES, dcn))}.")
  per_slice = num_devices // math.prod(dcn)
  if per_slice * math.prod(dcn) != num_devices:
    raise ValueError(f"config.mesh dcn sizes {dict(zip(MESH_AXES, dcn))} (product {math.prod(dcn)}) do not "
                     f"divide the {num_devices} devices.")
  auto = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(auto) > 1:
    raise ValueError(f"At most one config.mesh axis may be -1 (auto-fill); got {auto}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if auto:
    if per_slice % fixed:
      raise ValueError(
          f"config.mesh: cannot fill '{auto[0]}' (-1): the fixed axes "
          f"{ {a: s for a, s in zip(MESH_AXES, sizes) if s != -1} } (product {fixed}) do not divide the "
          f"{per_slice} devices per slice. Choose sizes whose product divides {per_slice}.")
    sizes = [per_slice // fixed if s == -1 else s for s in sizes]
  elif fixed != per_slice:
    raise ValueError(
        f"config.mesh sizes {dict(zip(MESH_AXES, sizes))} multiply to {fixed}, but there are {per_slice} "
        f"devices (per slice). Make the product equal {per_slice}, or set one axis to -1 to auto-fill "
        f"(e.g. --config.mesh.data=-1).")
  return tuple(s * d for s, d in zip(sizes, dcn))


def make_mesh(mesh_config, devices: Sequence[Any] | None = None) -> Mesh:
  """Build the (data, fsdp, tensor) mesh with Auto axis types (the logical-rules / GSPMD style).

  Multi-slice (any `dcn_*` > 1) uses `mesh_utils.create_hybrid_device_mesh`, which keeps the slow
  cross-slice (DCN) links on the outer axes; `jax.make_mesh` rejects multi-slice topologies.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  dcn = tuple(int(dict(mesh_config).get(f"dcn_{a}", 1)) for a in MESH_AXES)
  if math.prod(dcn) > 1:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    ici = tuple(s // d for s, d in zip(shape, dcn))
    try:
      device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    except (AttributeError, ValueError) as e:
      raise ValueError(f"config.mesh dcn_* = {dcn} asks for a multi-slice mesh, but the devices do not "
                       f"describe slices ({e}). Set every dcn_* to 1 on a single slice.") from e
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def logical_rules(rules_config) -> Rules:
  """Validate `config.logical_axis_rules` (a list of (logical_name, mesh_axis | tuple | None))."""
  out = []
  for i, rule in enumerate(rules_config):
    rule = tuple(rule)
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.logical_axis_rules[{i}] = {rule!r}; expected (logical_name, mesh_axis or None).")
    name, target = rule
    targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    bad = [t for t in targets if t not in MESH_AXES]
    if bad:
      raise ValueError(f"config.logical_axis_rules: rule {name!r} -> {target!r} names mesh axes {bad}; "
                       f"mesh axes are {list(MESH_AXES)}.")
    if isinstance(target, list):
      target = tuple(target)
    out.append((name, target))
  return tuple(out)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _boxed_leaves(tree) -> list[tuple[str, nn.Partitioned]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  return [(_path_str(p), x) for p, x in leaves]


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def _fit(shape, spec, mesh: Mesh):
  """Per dim, the longest prefix of its mesh axes whose size divides the dim -> (spec, changed dims)."""
  fitted, changed = [], []
  for dim, (size, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    axes = _axes(entry)
    kept = axes
    while kept and size % math.prod(mesh.shape[a] for a in kept):
      kept = kept[:-1]
    if kept != axes:
      changed.append((dim, axes, kept))
    fitted.append(None if not kept else (kept[0] if len(kept) == 1 else kept))
  return PartitionSpec(*fitted), changed


INDIVISIBLE = ("error", "replicate")


def check_logical_names(abstract_tree, rules: Rules, mesh: Mesh | None = None) -> None:
  """Every logical name on a param needs a rule; sharded dims must divide their mesh axes.

  Raises ValueError naming each offending logical name, with the params it hits (grouped: the optimizer
  moments of a param are the same problem), so the user can fix the rules, the mesh or the model.
  """
  known = {name for name, _ in rules}
  unknown, indivisible = {}, {}
  for path, leaf in _boxed_leaves(abstract_tree):
    if not isinstance(leaf, nn.Partitioned):
      continue
    names = leaf.names
    for name in names:
      if name is not None and name not in known and len(path) < len(unknown.get(name, path + "_")):
        unknown[name] = path  # the shortest path: the param itself rather than its optimizer moments
    if mesh is not None and not any(n is not None and n not in known for n in names):
      _, changed = _fit(leaf.value.shape, nn.logical_to_mesh_axes(names, rules), mesh)
      for dim, axes, _ in changed:
        key = (names[dim], leaf.value.shape[dim], axes, math.prod(mesh.shape[a] for a in axes))
        indivisible.setdefault(key, []).append(f"{path}: dim {dim}")
  if unknown:
    listing = ", ".join(f"{n!r} (e.g. on {p})" for n, p in sorted(unknown.items()))
    raise ValueError(
        f"Logical axis names without a rule in config.logical_axis_rules: {listing}. Add a rule for each, "
        f"e.g. ('{next(iter(sorted(unknown)))}', None) to replicate it; known names: {sorted(known)}.")
  if indivisible:
    lines = []
    for (name, size, axes, shards), where in sorted(indivisible.items(), key=lambda kv: str(kv[0])):
      where = sorted(where, key=len)
      more = f" and {len(where) - 2} more" if len(where) > 2 else ""
      lines.append(f"{name!r} (size {size}) over mesh axes {axes} ({shards} shards), on {'; '.join(where[:2])}{more}")
    raise ValueError(
        "Params whose sharded dimension does not divide the mesh: " + " | ".join(lines) + ". Change the mesh "
        "sizes (config.mesh), the model dims, or map that logical name to None in config.logical_axis_rules; or "
        "set config.mesh.indivisible='replicate' to shard such dims over the largest part of their mesh axes "
        "that divides them (replicating the rest, which costs memory).")


def state_shardings(abstract_tree, mesh: Mesh, rules: Rules, indivisible: str = "error"):
  """NamedShardings (same structure as the *unboxed* tree) for a boxed abstract tree.

  Leaves without logical names (step counters, optimizer counts, unannotated params) are replicated.
  `indivisible`: "error" (default) when a sharded dim does not divide its mesh axes; "replicate" shards
  it over the longest prefix of those axes that divides it and logs which params that touched.
  """
  if indivisible not in INDIVISIBLE:
    raise ValueError(f"config.mesh.indivisible must be one of {INDIVISIBLE}, got {indivisible!r}.")
  check_logical_names(abstract_tree, rules, mesh if indivisible == "error" else None)
  touched = []

  def leaf(path, x):
    if not isinstance(x, nn.Partitioned):
      return NamedSharding(mesh, PartitionSpec())
    spec, changed = _fit(x.value.shape, nn.logical_to_mesh_axes(x.names, rules), mesh)
    touched.extend(f"{_path_str(path)} dim {d} ({x.names[d]}: {a} -> {k or 'replicated'})" for d, a, k in changed)
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(leaf, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  params_touched = [t for t in touched if t.startswith("params/")]
  if params_touched:
    logging.warning("config.mesh.indivisible='replicate': %d param dims sharded over fewer mesh axes than their "
                    "rules say (they do not divide): %s", len(params_touched), "; ".join(params_touched[:8]) +
                    (" ..." if len(params_touched) > 8 else ""))
  return out


def unannotated_params(abstract_tree) -> list[str]:
  """Paths of array leaves that carry no logical names (they will be replicated)."""
  return [p for p, x in _boxed_leaves(abstract_tree)
          if not isinstance(x, nn.Partitioned) and hasattr(x, "shape") and x.shape]


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Mesh + logical rules in context, so `with_logical_constraint` in model code takes effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Leading (batch) dim sharded as the `batch` logical name says; other dims replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def batch_shards(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch dimension is split."""
  axes = batch_sharding(mesh, rules, 1).spec[0]
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  return math.prod(mesh.shape[a] for a in axes)


def global_batch_from_local(batch: dict, mesh: Mesh, rules: Rules) -> dict:
  """Assemble per-process batches (leading dim = global_batch / process_count) into global arrays."""
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, rules, x.ndim)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree_util.tree_map(put, batch)


def global_batch_from_full(batch: dict, mesh: Mesh, rules: Rules) -> dict:
  """Shard a batch that every process holds in full (eval batches). Replicates it when its batch size
  does not split over the batch shards (eval batches are small)."""
  shards = batch_shards(mesh, rules)

  def put(x):
    x = np.asarray(x)
    if x.ndim and x.shape[0] % shards == 0:
      sharding = batch_sharding(mesh, rules, x.ndim)
    else:
      sharding = NamedSharding(mesh, PartitionSpec())
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree_util.tree_map(put, batch)
