"""hat_jax.sharding on the 8 forced CPU devices: mesh sizes, rule validation, resolved PartitionSpecs,
directly-sharded init and batch assembly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from hat_jax import sharding
from hat_jax.models import layers

RULES = sharding.logical_rules([
    ("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
    ("kv_heads", "tensor"), ("head_dim", None), ("vocab", "tensor"), ("norm", None)])


def mesh_config(data=-1, fsdp=1, tensor=1, **dcn):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, **dcn))


@pytest.mark.parametrize("sizes, expected", [
    ((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 4, -1), (1, 4, 2)), ((2, 2, 2), (2, 2, 2))])
def test_mesh_shape_fills_one_axis(sizes, expected):
  assert sharding.mesh_shape(mesh_config(*sizes), 8) == expected


@pytest.mark.parametrize("sizes, message", [
    ((3, 1, 1), r"multiply to 3, but there are 8 devices"),
    ((-1, 3, 1), r"cannot fill 'data' \(-1\)"),
    ((-1, -1, 1), r"At most one config.mesh axis may be -1"),
    ((0, 8, 1), r"must be positive or -1"),
])
def test_mesh_shape_errors(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(mesh_config(*sizes), 8)


def test_mesh_shape_dcn_and_unknown_fields():
  assert sharding.mesh_shape(mesh_config(-1, 1, 1, dcn_data=2), 8) == (8, 1, 1)
  assert sharding.mesh_shape(mesh_config(1, -1, 2, dcn_data=2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match=r"dcn sizes .* do not divide the 8 devices"):
    sharding.mesh_shape(mesh_config(dcn_data=3), 8)
  with pytest.raises(ValueError, match=r"Unknown config.mesh fields \['model'\]"):
    sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, model=2)), 8)


def test_make_mesh_is_auto_typed():
  mesh = sharding.make_mesh(mesh_config(2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (AxisType.Auto,) * 3  # jax.make_mesh defaults to Explicit
  one = sharding.make_mesh(mesh_config(1, 1, 1), jax.devices()[:1])
  assert one.devices.size == 1


def test_multislice_on_cpu_is_a_clear_error():
  with pytest.raises(ValueError, match=r"multi-slice mesh, but the devices do not describe slices"):
    sharding.make_mesh(mesh_config(-1, 1, 1, dcn_data=2))


def test_rule_validation():
  assert sharding.logical_rules([("mlp", ["fsdp", "tensor"])]) == (("mlp", ("fsdp", "tensor")),)
  with pytest.raises(ValueError, match=r"names mesh axes \['model'\]"):
    sharding.logical_rules([("mlp", "model")])
  with pytest.raises(ValueError, match=r"expected \(logical_name, mesh_axis or None\)"):
    sharding.logical_rules([("mlp", "tensor", "extra")])


class TinyMLP(nn.Module):
  """Embed -> RMSNorm -> SwiGLU -> logits: every param and the MLP activation carry logical names."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(16, 8, embedding_init=layers.embed_init(), name="embed")(tokens)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = x + layers.SwiGLU(32, name="mlp")(layers.RMSNorm(name="norm")(x))
    return nn.Dense(16, use_bias=False, name="head", kernel_init=nn.with_logical_partitioning(
        layers.dense_init(), ("embed", "vocab")))(x)


def _abstract(model, rules):
  with nn.logical_axis_rules(rules):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 4), jnp.int32)))["params"]


def test_resolved_partition_specs_on_2x2x2():
  mesh = sharding.make_mesh(mesh_config(2, 2, 2))
  abstract = _abstract(TinyMLP(), RULES)
  shardings = sharding.state_shardings(abstract, mesh, RULES)
  specs = jax.tree_util.tree_map(lambda s: s.spec, shardings)
  assert specs["embed"]["embedding"] == P("tensor", "fsdp")
  assert specs["mlp"]["gate"]["kernel"] == P("fsdp", "tensor")
  assert specs["mlp"]["down"]["kernel"] == P("tensor", "fsdp")
  assert specs["norm"]["scale"] == P(None)
  assert specs["head"]["kernel"] == P("fsdp", "tensor")
  # The batch takes data x fsdp; embed then finds fsdp taken in activations (one use per array).
  assert sharding.batch_sharding(mesh, RULES, 2).spec == P(("data", "fsdp"), None)
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), RULES) == P(("data", "fsdp"), None, None)
  assert sharding.batch_shards(mesh, RULES) == 4


def test_init_is_directly_sharded_and_constraints_apply():
  mesh = sharding.make_mesh(mesh_config(2, 2, 2))
  model = TinyMLP()
  tokens = jnp.zeros((8, 4), jnp.int32)
  abstract = _abstract(model, RULES)
  shardings = sharding.state_shardings(abstract, mesh, RULES)

  def init(rng):
    return nn.unbox(model.init(rng, tokens)["params"])

  with nn.logical_axis_rules(RULES):
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  kernel = params["mlp"]["gate"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in kernel.addressable_shards} == {(4, 16)}  # (8, 32) split 2 x 2
  reference = init(jax.random.key(0))  # unsharded, one device
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(reference["mlp"]["gate"]["kernel"]))

  batch = sharding.global_batch_from_local({"tokens": np.arange(32, dtype=np.int32).reshape(8, 4) % 16},
                                           mesh, RULES)
  assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)
  with sharding.use_mesh(mesh, RULES):
    apply = jax.jit(lambda p, t: model.apply({"params": p}, t))
    hlo = apply.lower(params, batch["tokens"]).as_text()
    out = apply(params, batch["tokens"])
  # Both activation constraints (embed output, MLP hidden) reach the program (Shardy or GSPMD form).
  assert hlo.count("sdy.sharding_constraint") + hlo.count("custom_call @Sharding") >= 2
  np.testing.assert_allclose(np.asarray(out), np.asarray(model.apply({"params": reference}, batch["tokens"])),
                             rtol=1e-5, atol=1e-6)


def test_unknown_and_indivisible_names():
  mesh = sharding.make_mesh(mesh_config(1, 1, 8))
  abstract = _abstract(TinyMLP(), RULES)
  with pytest.raises(ValueError, match=r"'norm' \(e\.g\. on norm/scale\)"):
    sharding.state_shardings(abstract, mesh, tuple(r for r in RULES if r[0] != "norm"))
  sharding.state_shardings(abstract, mesh, RULES)  # vocab 16 and mlp 32 split 8 ways: fine
  table = nn.Embed(12, 8, embedding_init=layers.embed_init())  # 12 entries cannot split 8 ways
  with pytest.raises(ValueError, match=r"'vocab' \(size 12\) over mesh axes \('tensor',\) \(8 shards\), on "
                                       r"embedding: dim 0.*map that logical name to None.*indivisible='replicate'"):
    sharding.state_shardings(_abstract(table, RULES), mesh, RULES)
  # Opt-in: shard over the part of the axes that divides (here none of 'tensor'), and say so.
  out = sharding.state_shardings(_abstract(table, RULES), mesh, RULES, indivisible="replicate")
  assert jax.tree.leaves(out)[0].spec == P(None, "fsdp")  # 12 rows on tensor=8: replicated; embed keeps fsdp
  with pytest.raises(ValueError, match="indivisible must be one of"):
    sharding.state_shardings(_abstract(table, RULES), mesh, RULES, indivisible="pad")


def test_eval_batches_replicate_when_they_do_not_split():
  mesh = sharding.make_mesh(mesh_config(-1, 1, 1))
  out = sharding.global_batch_from_full({"x": np.ones((3, 2), np.float32), "y": np.ones((8, 2))}, mesh, RULES)
  assert out["x"].sharding.spec == P() and out["y"].sharding.spec == P(("data", "fsdp"), None)
