"""Released TFree-HAT checkpoints <-> this project's checkpoints (`variant="released"`).

  python -m hat_jax.convert from-hf DIR --out WORKDIR [--base_config=configs/tfree_hat.py:llama3_8b]
  python -m hat_jax.convert to-hf WORKDIR --out DIR
  python -m hat_jax.convert from-hf-llama DIR --out WORKDIR --base_config=configs/tfree_hat.py:llama3_8b

`from-hf` reads the Hugging Face directory's `config.json` and safetensors (one file, or shards listed in
`model.safetensors.index.json`), one tensor at a time, and writes WORKDIR/checkpoints/0 (params only: a
run resuming from it starts a fresh optimizer state at step 0) with a run config, WORKDIR/config.py
(`python -m hat_jax.main --config=WORKDIR/config.py --workdir=WORKDIR ...`): the `--base_config` (mesh,
training, data settings) with `config.model`, `data.max_word_bytes` and `data.special_tokens` replaced
by the released model's, and `data.bos = False`: the released models were trained on documents without our
BOS byte (their `_prepare_input` feeds the raw text), so training rows, prompts and scored texts of the run
start with the text itself. The released config.json is kept as WORKDIR/hf_config.json for `to-hf`, which writes the same
keys, shapes and dtypes back (bit for bit when the params were not trained). `from-hf-llama` takes a plain
Llama checkpoint (`model.layers.{i}...`) as the backbone of the base config's HAT, the byte modules freshly
initialised: how TFree-HAT was made. That HAT is trained by this project's pipeline, so it keeps the base
config's `data.bos` (True by default). `to-hf` warns when the run's documents started with BOS (the released
modeling code never prepends it).

Layout (torch `nn.Linear.weight` is [out, in]; ours [in, ...out] with heads split):
  q/k/v_proj [heads*hd, in] <-> [in, heads, hd];  o_proj [out, heads*hd] <-> [heads, hd, out]
  gate/up [mlp, d] <-> [d, mlp];  down [d, mlp] <-> [mlp, d];  lm_head [256, d] <-> [d, 256]
  latent_query / first_word_embedding [1, 1, D] <-> [D];  norms and the byte embedding as they are.
Scanned stacks (`StackConfig.scan`) hold each param for all layers in one [layers, ...] array.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

LLAMA_LAYER = {  # HF Llama layer key suffix -> (our path inside a Block, kind)
    "self_attn.q_proj.weight": ("attn/q_proj/kernel", "in_heads"),
    "self_attn.k_proj.weight": ("attn/k_proj/kernel", "in_heads"),
    "self_attn.v_proj.weight": ("attn/v_proj/kernel", "in_heads"),
    "self_attn.o_proj.weight": ("attn/o_proj/kernel", "heads_out"),
    "mlp.gate_proj.weight": ("mlp/gate/kernel", "transpose"),
    "mlp.up_proj.weight": ("mlp/up/kernel", "transpose"),
    "mlp.down_proj.weight": ("mlp/down/kernel", "transpose"),
    "input_layernorm.weight": ("attn_norm/scale", "same"),
    "post_attention_layernorm.weight": ("mlp_norm/scale", "same"),
}


class ConversionError(ValueError):
  pass


# --- config -----------------------------------------------------------------------------------------------


def _rope_scaling(stack: dict):
  scaling = stack.get("rope_scaling")
  if not scaling:
    return None
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind == "default":
    return None
  if kind != "llama3":
    raise ConversionError(f"rope_scaling {scaling} is not supported (only Llama 3.1's 'llama3' scaling).")
  return (float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"]),
          int(scaling["original_max_position_embeddings"]))


def _stack(hf: dict, what: str) -> dict:
  for key, ok in (("mlp_bias", False), ("hidden_act", "silu"), ("key_query_norm", False)):
    if hf.get(key, ok) != ok:
      raise ConversionError(f"The released {what} config has {key}={hf.get(key)!r}; this converter supports "
                            f"{key}={ok!r} only (the released TFree-HAT models' setting).")
  heads = int(hf["num_attention_heads"])
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
  window = hf.get("sliding_window")
  return dict(
      d_model=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=head_dim,
      mlp_dim=int(hf["intermediate_size"]),
      # The released code attends to keys i-w ... i (w + 1 of them); our window counts the query's own key.
      window=None if window is None else int(window) + 1,
      rope_theta=float(hf.get("rope_theta", 10_000.0)), rope_scaling=_rope_scaling(hf),
      norm_eps=float(hf["rms_norm_eps"]), qk_norm=False)


def _qk_norm(cross: dict) -> str:
  if not cross.get("key_query_norm"):
    return "none"
  return "per_head" if cross.get("key_query_norm_per_head") else "full"


def model_config_from_hf(hf: dict) -> tuple[dict, int]:
  """(config.model as a dict, max_word_bytes) of the released HATArchitectureConfig `hf` (config.json)."""
  try:
    enc_hf, bb_hf, dec_hf = hf["encoder_config"], hf["backbone_config"], hf["decoder_config"]
    enc_cross, dec_cross = enc_hf["cross_attention_config"], dec_hf["cross_attention_config"]
  except KeyError as e:
    raise ConversionError(f"config.json is not a released TFree-HAT config: no {e} (expected encoder_config, "
                          f"backbone_config, decoder_config with cross_attention_config).") from None
  for name, stack in (("encoder", enc_hf), ("decoder", dec_hf)):
    if int(stack.get("vocab_size", 256)) != 256:
      raise ConversionError(f"The released {name} has vocab_size {stack['vocab_size']}; a byte HAT has 256.")
  encoder, backbone, decoder = _stack(enc_hf, "encoder"), _stack(bb_hf, "backbone"), _stack(dec_hf, "decoder")
  # The released code sets the window attribute on the encoder's and decoder's layers only: its backbone is
  # fully causal whatever backbone_config.sliding_window says.
  backbone["window"] = None
  pool_heads = int(enc_cross["num_attention_heads"])
  if int(enc_cross["hidden_size"]) != pool_heads * encoder["head_dim"]:
    raise ConversionError(
        f"The encoder connector's head_dim ({enc_cross['hidden_size']} / {pool_heads}) differs from the encoder's "
        f"({encoder['head_dim']}); the released code requires them equal (its RoPE is the encoder's).")
  model = dict(
      variant="released", encoder=encoder, backbone=backbone, decoder=decoder,
      pool_heads=pool_heads, pool_kv_heads=int(enc_cross["attention_num_kv_heads"]), pool_qk_norm=_qk_norm(enc_cross),
      guide_heads=int(dec_cross["num_attention_heads"]), guide_kv_heads=int(dec_cross["attention_num_kv_heads"]),
      guide_hidden=int(dec_cross["hidden_size"]), guide_qk_norm=_qk_norm(dec_cross),
      guide_every_layer=bool(dec_hf.get("cross_attn_every_layer", False)))
  return model, int(hf.get("max_word_size", 100))


# --- the key map ------------------------------------------------------------------------------------------


# How a torch-layout tensor maps onto ours (see the module docstring): "same"; "vector" ([1, 1, D] <-> [D]);
# "in_heads" ([heads*hd, in] <-> [in, heads, hd], q/k/v projections); "heads_out" ([out, heads*hd] <->
# [heads, hd, out], o projections); "transpose" ([out, in] <-> [in, out]).


def _to_ours(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A torch-layout tensor -> our layout of `shape` (the layer's, without a scan axis)."""
  if kind in ("same", "vector"):
    return x.reshape(shape)
  if kind in ("in_heads", "heads_out"):
    return x.T.reshape(shape)
  if kind == "transpose":
    return x.T
  raise AssertionError(kind)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "same":
    return x
  if kind == "vector":
    return x.reshape(1, 1, -1)
  if kind == "in_heads":
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_out":
    return x.reshape(-1, x.shape[-1]).T
  if kind == "transpose":
    return x.T
  raise AssertionError(kind)


def _llama_keys(hf_prefix: str, stack: str, index: int, scanned: bool, inner: str = ""
                ) -> dict[str, tuple[str, int | None, str]]:
  """The key map of one Llama layer `hf_prefix.*` -> our `stack`'s layer `index` (scanned: its slice of
  `stack/layers/...`), `inner` being where the Block sits inside our layer."""
  base = f"{stack}/layers/{inner}" if scanned else f"{stack}/layer_{index}/{inner}"
  return {f"{hf_prefix}.{suffix}": (base + path, index if scanned else None, kind)
          for suffix, (path, kind) in LLAMA_LAYER.items()}


def key_map(model: dict) -> dict[str, tuple[str, int | None, str]]:
  """HF key -> (our param path "a/b/c", layer index inside a scanned stack or None, kind)."""
  out: dict[str, tuple[str, int | None, str]] = {}
  out["encoder.embedding_layer.weight"] = ("byte_embed/embedding", None, "same")
  for i in range(model["encoder"]["num_layers"]):
    out.update(_llama_keys(f"encoder.layers.{i}", "encoder", i, bool(model["encoder"].get("scan", False))))
  conn = "encoder_connector.cross_attention_encoder_connector"
  out["encoder_connector.latent_query"] = ("pool/latent_query", None, "vector")
  for proj, kind in (("q", "in_heads"), ("k", "in_heads"), ("v", "in_heads"), ("o", "heads_out")):
    out[f"{conn}.{proj}_proj.weight"] = (f"pool/{proj}_proj/kernel", None, kind)
  if model["pool_qk_norm"] != "none":
    out[f"{conn}.norm_query.weight"] = ("pool/norm_query/scale", None, "same")
    out[f"{conn}.norm_key.weight"] = ("pool/norm_key/scale", None, "same")
  for i in range(model["backbone"]["num_layers"]):
    out.update(_llama_keys(f"backbone.layers.{i}", "backbone_stack", i, bool(model["backbone"].get("scan", False))))
  out["decoder_connector.first_word_embedding"] = ("first_word_embedding", None, "vector")
  for i in range(model["decoder"]["num_layers"]):
    layer = "decoder/layer_0" if i == 0 else f"decoder_rest/layer_{i - 1}"
    hf = f"decoder.decoder_layers.{i}"
    out.update(_llama_keys(f"{hf}.llama_layer", "decoder" if i == 0 else "decoder_rest", 0 if i == 0 else i - 1,
                           False, "block/"))  # the released decoder is never scanned (hat.py)
    out[f"{hf}.query_norm.weight"] = (f"{layer}/query_norm", None, "same")
    out[f"{hf}.kv_norm.weight"] = (f"{layer}/kv_norm/scale", None, "same")
    if i == 0 or model["guide_every_layer"]:
      for proj, kind in (("q", "in_heads"), ("k", "in_heads"), ("v", "in_heads"), ("o", "heads_out")):
        out[f"{hf}.cross_attention.{proj}_proj.weight"] = (f"{layer}/cross/{proj}_proj", None, kind)
      if model["guide_qk_norm"] != "none":
        for norm in ("norm_query", "norm_key"):
          out[f"{hf}.cross_attention.{norm}.weight"] = (f"{layer}/cross/{norm}", None, "same")
  out["layer_norm.weight"] = ("final_norm/scale", None, "same")
  out["lm_head.weight"] = ("lm_head/kernel", None, "transpose")
  return out


# --- safetensors I/O --------------------------------------------------------------------------------------


class SafetensorsReader:
  """The tensors of a HF directory (one `model.safetensors` or shards with an index), read one at a time.
  Each read maps its shard only for the read: a process that kept every shard mapped would count all the
  pages it touched as its own memory."""

  def __init__(self, directory: str):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self._open = lambda name: safe_open(os.path.join(directory, name), framework="np")  # noqa: E731
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    else:
      if not os.path.exists(os.path.join(directory, "model.safetensors")):
        raise ConversionError(f"{directory} has neither model.safetensors nor model.safetensors.index.json.")
      with self._open("model.safetensors") as f:
        weight_map = {k: "model.safetensors" for k in f.keys()}
    self.weight_map = weight_map

  def keys(self) -> list[str]:
    return sorted(self.weight_map)

  def get(self, key: str) -> np.ndarray:
    with self._open(self.weight_map[key]) as f:
      return f.get_tensor(key)

  def dtype(self, key: str) -> str:
    """The stored dtype as a numpy name, from the file header (no data read)."""
    with self._open(self.weight_map[key]) as f:
      code = f.get_slice(key).get_dtype()
    return {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}.get(code, code.lower())


def write_safetensors(directory: str, tensors: Iterator[tuple[str, np.ndarray]], *,
                      shard_bytes: int = 5 << 30) -> None:
  """Write (key, array) pairs as shards of at most `shard_bytes` plus model.safetensors.index.json, holding
  one shard in memory at a time."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  names: list[str] = []
  weight_map: dict[str, str] = {}

  def flush():
    name = f"model-{len(names) + 1:05d}.safetensors"
    save_file(shards[-1], os.path.join(directory, name), metadata={"format": "pt"})
    for k in shards[-1]:
      weight_map[k] = name
    names.append(name)
    shards[-1] = {}

  for key, array in tensors:
    if shards[-1] and size + array.nbytes > shard_bytes:
      flush()
      size = 0
    shards[-1][key] = np.ascontiguousarray(array)
    size += array.nbytes
  if shards[-1]:
    flush()
  # Rename to the HF convention "-of-N" once N is known.
  total = len(names)
  final = {}
  for i, name in enumerate(names):
    new = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
    os.replace(os.path.join(directory, name), os.path.join(directory, new))
    final[name] = new
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": int(sum(os.path.getsize(os.path.join(directory, n))
                                                   for n in final.values()))},
               "weight_map": {k: final[v] for k, v in sorted(weight_map.items())}}, f, indent=2)


# --- conversion -------------------------------------------------------------------------------------------


def _flat_shapes(abstract_params) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}


def _nest(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def param_loaders(read: Callable[[str], np.ndarray], hf_keys: list[str], mapping: dict, abstract_params, *,
                  ignored: tuple[str, ...] = (), fills_all: bool = True
                  ) -> dict[str, tuple[tuple[int, ...], Any, Callable[[], np.ndarray]]]:
  """{our param path: (shape, dtype, load)} where load() reads the param's HF tensor(s) (all layers of a
  scanned stack) and returns it in our layout: one param in memory at a time. `mapping` is HF key ->
  (path, scan index, kind) (`key_map`). Every HF key but the `ignored` ones must be mapped and every
  mapped key present; with `fills_all`, every param must be filled too. Otherwise a ConversionError
  naming them; a tensor of the wrong shape is a ConversionError naming its key when it is loaded."""
  targets = _flat_shapes(abstract_params)
  unknown = sorted(set(hf_keys) - set(mapping) - set(ignored))
  missing = sorted(set(mapping) - set(hf_keys))
  if unknown or missing:
    raise ConversionError(f"The checkpoint does not match its config.json: {len(unknown)} unknown keys "
                          f"{unknown[:5]}, {len(missing)} missing keys {missing[:5]}.")
  unmapped = sorted(set(targets) - {path for path, _, _ in mapping.values()})
  if fills_all and unmapped:
    raise ConversionError(f"No released key fills our params {unmapped[:5]} (a converter bug).")
  sources: dict[str, list[tuple[str, int | None, str]]] = {}
  for key in hf_keys:
    if key in mapping:
      path, index, kind = mapping[key]
      sources.setdefault(path, []).append((key, index, kind))

  def load(path: str) -> np.ndarray:
    target = targets[path]
    out = None
    for key, index, kind in sources[path]:
      layer_shape = tuple(target.shape[1:]) if index is not None else tuple(target.shape)
      tensor = read(key)
      try:
        value = _to_ours(kind, tensor, layer_shape)
      except ValueError:
        value = None
      if value is None or value.shape != layer_shape:
        raise ConversionError(f"{key}: shape {tuple(tensor.shape)} does not fit our {path} {layer_shape} "
                              f"(from config.json): the checkpoint and its config disagree.")
      if index is None:
        return value.astype(target.dtype)
      if out is None:
        out = np.empty(target.shape, target.dtype)
      out[index] = value
    return out

  return {path: (tuple(targets[path].shape), targets[path].dtype, functools.partial(load, path))
          for path in sorted(sources)}


def hf_to_params(read: Callable[[str], np.ndarray], hf_keys: list[str], model: dict, abstract_params) -> dict:
  """Our params (numpy, the abstract params' dtypes) from HF tensors, all in memory (tests, small models;
  `from_hf` writes them one at a time instead)."""
  loaders = param_loaders(read, hf_keys, key_map(model), abstract_params)
  return _nest({path: load() for path, (_, _, load) in loaders.items()})


def params_to_hf(params, model: dict, hf_dtypes: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, torch-layout array) for every released tensor, in key order, one at a time."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  flat = _flat_shapes(params)
  for key, (path, index, kind) in sorted(key_map(model).items()):
    value = np.asarray(flat[path])
    value = value[index] if index is not None else value
    array = _to_hf(kind, value)
    dtype = (hf_dtypes or {}).get(key)
    if dtype is not None:
      array = array.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
    yield key, array


# --- commands ---------------------------------------------------------------------------------------------


def _run_config(base_config: str, model: dict, max_word_bytes: int, overrides: dict[str, str] | None = None):
  """The base config (mesh, training, data; `overrides` applied, e.g. {"model.backbone.scan": "false"})
  with the released model in `config.model`, run the way the base config runs its stacks (scan / remat)
  and computes (attention_impl, dtype)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hat_jax import sweep  # pylint: disable=g-import-not-at-top
  config = sweep.apply_overrides(sweep.load_config(base_config), overrides or {}, from_text=True)
  if config.task != "hat":
    raise ConversionError(f"--base_config={base_config} is a {config.task!r} config; a HAT config is needed.")
  base = config.model
  execution = {s: {k: base[s][k] for k in ("scan", "remat") if k in base[s]} for s in ("encoder", "backbone", "decoder")}
  config.model = ml_collections.ConfigDict({**model, "attention_impl": base.get("attention_impl", "xla"),
                                            "dtype": base.get("dtype", "float32")})
  for stack, settings in execution.items():
    config.model[stack].update(settings)
  config.model.decoder.scan = False  # the released decoder's layer 0 is built apart (hat.py)
  config.data.max_word_bytes = max_word_bytes
  return config


_CONFIG_PY = '''"""The run config of the checkpoint in this directory, written by `python -m hat_jax.convert`:

  python -m hat_jax.main --config={directory}/config.py --workdir={directory} --mode=eval|sample|train
"""

import json
import os

import ml_collections


def get_config(arg=None):
  del arg
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
'''


def _check_fresh(workdir: str) -> None:
  """Refuse before writing anything: converting into a run directory would mix two runs."""
  ckpts = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts)):
    raise ConversionError(f"{workdir} already holds checkpoints; convert into a fresh --out directory.")


def _params_only_checkpoint(workdir: str, params, config, fingerprints=None) -> None:
  """(After `_check_fresh`.) WORKDIR/checkpoints/0 holding {step, params} (no optimizer state), plus WORKDIR/config.py and
  run_config.json so that `python -m hat_jax.main --config=WORKDIR/config.py --workdir=WORKDIR` runs it."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hat_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None, async_save=False) as ckpt:
    ckpt.save(0, {"step": jnp.zeros((), jnp.int32), "params": params}, None, config, fingerprints=fingerprints)
  with open(os.path.join(workdir, "run_config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  with open(os.path.join(workdir, "config.py"), "w") as f:
    f.write(_CONFIG_PY.replace("{directory}", workdir))


def from_hf(directory: str, out: str, base_config: str, progress=print, overrides: dict[str, str] | None = None
            ) -> None:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from hat_jax.train import registry  # pylint: disable=g-import-not-at-top
  _check_fresh(out)
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  model, max_word_bytes = model_config_from_hf(hf)
  config = _run_config(base_config, model, max_word_bytes, overrides)
  # The released splitter cuts each special token (e.g. "<|eot_id|>" -> 192) out as a one-byte word first.
  config.data.special_tokens = {str(k): int(v) for k, v in hf.get("special_token_dict", {}).items()}
  # ... and feeds the raw text: no BOS byte before a document (data.bos, configs/hat.py: data_config).
  config.data.bos = False
  model = config.model.to_dict()  # with the base config's scan settings: scanned stacks stack the layers
  task = registry.make_task(config)
  abstract = nn.unbox(jax.eval_shape(task.init_params, jax.random.key(0)))
  param_dtype = np.dtype(config.train.param_dtype) if config.train.param_dtype != "bfloat16" else jax.numpy.bfloat16
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, param_dtype), abstract)
  reader = SafetensorsReader(directory)
  loaders = param_loaders(reader.get, reader.keys(), key_map(model), abstract["params"])
  # Two passes, one param in memory at a time: fingerprint each (and check its shape), then write each.
  from hat_jax.train import checkpoint as ckpt_lib, integrity  # pylint: disable=g-import-not-at-top
  fingerprints = integrity.fingerprint_tree({"step": np.zeros((), np.int32)})
  for n, (path, (_, _, load)) in enumerate(loaders.items()):
    fingerprints.update(integrity.fingerprint_tree(_nest({f"params/params/{path}": load()})))
    progress(f"[{n + 1}/{len(loaders)}] checked {path}")
  params = {"params": _nest({path: ckpt_lib.LazyArray(shape, dtype, load)
                             for path, (shape, dtype, load) in loaders.items()})}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "hf_config.json"), "w") as f:
    json.dump({**hf, "_hat_jax_dtypes": {k: reader.dtype(k) for k in reader.keys()}}, f, indent=1)
  _params_only_checkpoint(out, params, config, fingerprints)
  progress(f"wrote {out}/checkpoints/0 ({len(reader.keys())} tensors) and {out}/config.py; run with "
           f"python -m hat_jax.main --config={out}/config.py --workdir={out} --mode=eval|sample|train")


def to_hf(workdir: str, out: str, progress=print) -> None:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hat_jax.train import checkpoint as ckpt_lib, registry  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "hf_config.json")) as f:
    hf = json.load(f)
  dtypes = hf.pop("_hat_jax_dtypes", {})
  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None) as ckpt:
    config = ml_collections.ConfigDict(ckpt.restore_config())
    task = registry.make_task(config)
    abstract = nn.unbox(jax.eval_shape(task.init_params, jax.random.key(0)))
    step, params = ckpt.restore_params(abstract)
  model = config.model.to_dict()
  write_safetensors(out, params_to_hf(params["params"], model, dtypes))
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  progress(f"wrote {out} from step {step} of {workdir}")
  if config.data.get("bos", True):
    from hat_jax.data.splitter import BOS as BOS_BYTE  # pylint: disable=g-import-not-at-top
    progress(f"warning: {workdir} was run with data.bos=True (documents framed [BOS] text [EOD], BOS = byte "
             f"{BOS_BYTE:#x}), but the released HF code never prepends that byte: there the model sees raw text "
             "framing it was not trained on here (the released models and from-hf runs use data.bos=False).")


LLAMA_DROPPED = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")  # token-level: not in a HAT


def llama_backbone_from_hf(hf: dict, base: dict) -> dict:
  """The base config's backbone stack with its shape from a Llama config.json (scan / remat kept)."""
  if hf.get("model_type", "llama") != "llama":
    raise ConversionError(f"config.json is a {hf.get('model_type')!r} model; from-hf-llama reads Llama checkpoints.")
  stack = _stack({**hf, "sliding_window": None}, "Llama")
  return {**dict(base), **stack, "window": None}


def from_hf_llama(directory: str, out: str, base_config: str, progress=print) -> None:
  """A plain Llama checkpoint as the backbone of the base config's HAT (tfree or released variant); the byte
  modules are initialised from the config's seed, as when TFree-HAT was made from Llama 3.1."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hat_jax import sweep  # pylint: disable=g-import-not-at-top
  from hat_jax.train import registry  # pylint: disable=g-import-not-at-top
  _check_fresh(out)
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  config = sweep.load_config(base_config)
  if config.task != "hat" or config.model.get("variant", "tfree") == "paper":
    raise ConversionError(f"--base_config={base_config} must be a tfree or released HAT config (its backbone is a "
                          f"stack of Llama layers).")
  config.model.backbone = ml_collections.ConfigDict(llama_backbone_from_hf(hf, config.model.backbone.to_dict()))
  task = registry.make_task(config)
  dtype = jax.numpy.bfloat16 if config.train.param_dtype == "bfloat16" else np.dtype(config.train.param_dtype)
  params = jax.tree.map(lambda x: np.asarray(x, dtype=dtype), nn.unbox(task.init_params(jax.random.key(int(config.seed)))))
  reader = SafetensorsReader(directory)
  backbone = config.model.backbone
  mapping = {}
  for i in range(int(backbone.num_layers)):
    mapping.update(_llama_keys(f"model.layers.{i}", "backbone_stack", i, bool(backbone.get("scan", False))))
  loaders = param_loaders(reader.get, reader.keys(), mapping, params["params"], ignored=LLAMA_DROPPED,
                          fills_all=False)  # the byte modules keep their initialisation
  flat = _flat_shapes(params["params"])
  for n, (path, (_, _, load)) in enumerate(loaders.items()):
    flat[path] = load()
    progress(f"[{n + 1}/{len(loaders)}] {path}")
  _params_only_checkpoint(out, {"params": _nest(flat)}, config)
  progress(f"wrote {out}/checkpoints/0: the Llama blocks as the backbone, byte modules initialised (seed "
           f"{config.seed}); dropped {[k for k in LLAMA_DROPPED if k in reader.keys()]}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hat_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("from-hf", help="released TFree-HAT (HF directory) -> WORKDIR")
  p.add_argument("directory")
  p.add_argument("--out", required=True)
  p.add_argument("--base_config", default="configs/hat.py:tiny")
  p.add_argument("--override", action="append", default=[],
                 help="KEY=VALUE on the base config, e.g. model.backbone.scan=false (repeatable)")
  p = sub.add_parser("to-hf", help="WORKDIR converted from a released model -> HF directory")
  p.add_argument("workdir")
  p.add_argument("--out", required=True)
  p = sub.add_parser("from-hf-llama", help="Llama checkpoint (HF directory) -> backbone of a new HAT in WORKDIR")
  p.add_argument("directory")
  p.add_argument("--out", required=True)
  p.add_argument("--base_config", required=True)
  args = parser.parse_args(argv)
  from hat_jax.train.checkpoint import CheckpointCorruptError  # pylint: disable=g-import-not-at-top
  try:
    if args.command == "from-hf":
      from hat_jax import sweep  # pylint: disable=g-import-not-at-top
      from_hf(args.directory, args.out, args.base_config, overrides=sweep.parse_overrides(args.override))
    elif args.command == "from-hf-llama":
      from_hf_llama(args.directory, args.out, args.base_config)
    else:
      to_hf(args.workdir, args.out)
  except (ConversionError, FileNotFoundError, CheckpointCorruptError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

