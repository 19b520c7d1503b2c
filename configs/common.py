"""Shared config blocks for every `configs/<experiment>.py`.

An experiment config looks like:

  from configs import common

  def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, size="tiny")           # "tiny" or "size=tiny,seed=3"
    config = common.base_config("hat", seed=arg.seed)  # task, seed, train, mesh, logical_axis_rules
    config.train = common.train_defaults(steps=200, batch_size=8, learning_rate=3e-3)
    config.model = ml_collections.ConfigDict({...})    # task-specific
    config.data = ml_collections.ConfigDict({...})
    config.sample = ml_collections.ConfigDict({...})
    return config

and runs as `python -m hat_jax.main --config=configs/hat.py:tiny --workdir=runs/x --config.train.steps=50`.
Every leaf has its final type here, so `--config.a.b=...` overrides type-check (the CLI locks the config).
"""

from __future__ import annotations

import ml_collections

# Logical axis names used by model code, with what they name:
#   batch      leading batch dim of activations and inputs
#   length     sequence positions (bytes, words, tokens, patches)
#   embed      model width (d_model)
#   mlp        MLP hidden width
#   heads      query heads;  kv_heads: key/value heads (GQA);  head_dim: per-head width
#   vocab      vocabulary / codebook entries (embedding and output tables)
#   norm       norm scales (1-D)
#   layers     stacked-layer axis (nn.scan); never sharded
#   cache_length  KV-cache slots during decoding
# The default rules below shard params FSDP-style on `fsdp` (the embed dim) and Megatron-style on
# `tensor` (heads / mlp / vocab), and shard the batch over data x fsdp. Rules are ordered: for each
# array, earlier rules claim a mesh axis first and a mesh axis is used at most once per array
# (so `embed` is unsharded in activations whose batch already uses `fsdp`).
_DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),
)


def default_rules(*extra: tuple[str, str | tuple[str, ...] | None]) -> list[tuple]:
  """The default logical -> mesh rules, plus `extra` rules for task-specific names.

  Extra rules for an existing name override it (e.g. ("kv_heads", None) for a model with fewer KV
  heads than the tensor-parallel size); new names are appended.
  """
  overridden = {name for name, _ in extra}
  rules = [r for r in _DEFAULT_RULES if r[0] not in overridden]
  return [tuple(r) for r in extra if r[0] in dict(_DEFAULT_RULES)] + rules + [
      tuple(r) for r in extra if r[0] not in dict(_DEFAULT_RULES)]


def train_defaults(**overrides) -> ml_collections.ConfigDict:
  """`config.train`: optimizer, schedule, loop cadence. Keyword args override (names must exist)."""
  train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=32,  # global, across all processes
      learning_rate=1e-3,
      warmup_steps=100,
      lr_end_fraction=0.1,  # cosine decays to this fraction of learning_rate
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,  # matrices only (rank >= 2)
      grad_clip=1.0,  # global-norm clip; 0 disables
      param_dtype="float32",  # "float32" | "bfloat16" (storage dtype of params and Adam moments)
      log_every=50,
      eval_every=500,
      checkpoint_every=500,
      keep_checkpoints=3,  # most recent checkpoints kept; 0 keeps all
      # A newest checkpoint that cannot be read or fails its fingerprints: "refuse" (stop, naming the
      # newest one that verifies) or "fallback" (resume from that one; the bad ones move to
      # <workdir>/checkpoints_quarantine, never deleted).
      on_bad_checkpoint="refuse",
      # <workdir>/run.lock: the holder refreshes it every lock_heartbeat_seconds; a lock from another host
      # whose heartbeat is older than lock_stale_seconds is taken over (same host: as soon as its pid is gone).
      lock_heartbeat_seconds=30.0,
      lock_stale_seconds=300.0,
  ))
  _update(train, overrides, "config.train")
  return train


def mesh_defaults(**overrides) -> ml_collections.ConfigDict:
  """`config.mesh`: sizes per axis, -1 = the remaining devices; dcn_* multiply in across slices."""
  # indivisible: "error" when a param dim does not divide its mesh axes (at scale a silently replicated
  # matrix is an out-of-memory crash far from the cause), or "replicate" to shard it over the part of its
  # axes that divides it (e.g. 6 heads on tensor=4: heads replicated, the MLP still tensor-parallel).
  mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
                                        indivisible="error"))
  _update(mesh, overrides, "config.mesh")
  return mesh


def base_config(task: str, *, seed: int = 0) -> ml_collections.ConfigDict:
  """The shared skeleton; experiments fill `model`, `data`, `sample` and adjust `train`/`mesh`."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = seed
  config.train = train_defaults()
  config.mesh = mesh_defaults()
  config.logical_axis_rules = default_rules()
  config.model = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  config.sample = ml_collections.ConfigDict()
  return config


def size_row(sizes: dict, size: str, experiment: str) -> tuple:
  """The row of an experiment's SIZES table, or an error listing the sizes it has."""
  if size not in sizes:
    raise ValueError(f"Unknown {experiment} size {size!r}; choose one of {sorted(sizes)}.")
  return sizes[size]


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style config argument: "tiny" sets the first default; "size=tiny,seed=3,runlocal" sets
  named ones (a bare name without '=' is True if it is a known bool default). Values take the type
  of their default."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  first = next(iter(defaults), None)
  for i, part in enumerate(p for p in arg.split(",") if p):
    if "=" in part:
      key, value = part.split("=", 1)
    elif isinstance(defaults.get(part), bool):
      key, value = part, "True"
    elif i == 0 and first is not None:
      key, value = first, part
    else:
      raise ValueError(f"Config argument {part!r} in {arg!r}: expected key=value; known keys {sorted(defaults)}.")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}.")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif default is None:
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


def _update(block: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
  unknown = sorted(set(overrides) - set(block.keys()))
  if unknown:
    raise ValueError(f"Unknown {where} fields {unknown}; known: {sorted(block.keys())}.")
  for key, value in overrides.items():
    block[key] = value


# -- paper-scale (pod) building blocks -------------------------------------------------------------------


def swiglu_dim(d_model: int, multiple: int = 8) -> int:
  """SwiGLU hidden width with the parameters of a 4 x d two-matrix MLP (3 * d * m = 8 * d^2), rounded."""
  return max(multiple, int(round(8 * d_model / 3 / multiple)) * multiple)


def pod_stack(d_model: int, num_layers: int, num_heads: int, *, num_kv_heads: int | None = None,
              head_dim: int = 128, mlp_dim: int | None = None, window: int | None = None,
              rope_theta: float = 10_000.0, norm_eps: float = 1e-6, qk_norm: bool = False,
              remat: str = "full") -> ml_collections.ConfigDict:
  """A StackConfig dict for paper-scale runs (configs/hat_paper.py, tfree_hat.py, the paper sizes of
  block_transformer.py, vanilla_lm.py and var.py): MHA by default, SwiGLU of 8/3 x width, scanned when it has
  more than two layers, full remat by default."""
  return ml_collections.ConfigDict(dict(
      d_model=d_model, num_layers=num_layers, num_heads=num_heads,
      num_kv_heads=num_heads if num_kv_heads is None else num_kv_heads, head_dim=head_dim,
      mlp_dim=swiglu_dim(d_model) if mlp_dim is None else mlp_dim, window=window, rope_theta=rope_theta,
      qk_norm=qk_norm, norm_eps=norm_eps, scan=num_layers > 2, remat=remat))


def pod_mesh() -> ml_collections.ConfigDict:
  """Pure FSDP: every device on `fsdp` (params, optimizer state and batch sharded over it)."""
  return mesh_defaults(data=1, fsdp=-1, tensor=1)
