"""Sharded training on the 8 CPU devices matches one device: init, loss, grads, a few trained steps,
and checkpoints restored onto a different mesh."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import toy_task
from hat_jax import sharding
from hat_jax.train import metrics as metrics_lib
from hat_jax.train import trainer

MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def mesh_config(sizes, attention=True):
  config = toy_task.toy_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = sizes
  config.model.attention = attention
  return config


def loss_and_grads(run, params, batch):
  def loss(p, b):
    return run.task.loss(p, b, jax.random.key(0))[0]

  with run.use_mesh():
    return jax.jit(jax.value_and_grad(loss))(params, batch)


def _one_device_reference(attention):
  config = toy_task.single_device_config()
  config.model.attention = attention
  run = trainer.build(config, toy_task.one_device())
  params = run.init_fn(run.rng(0))["params"]
  batch = next(run.task.train_iterator(0))
  loss, grads = loss_and_grads(run, params, sharding.global_batch_from_local(batch, run.mesh, run.rules))
  return batch, jax.device_get(params), float(loss), jax.device_get(grads)


@pytest.fixture(scope="module")
def one_device_reference():
  cache = {}
  return lambda attention: cache.setdefault(attention, _one_device_reference(attention))


@pytest.mark.parametrize("sizes, attention", [(m, True) for m in MESHES] + [((2, 2, 2), False)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else
                         ("attention" if v else "mlp_only"))
def test_init_loss_and_grads_match_one_device(sizes, attention, one_device_reference):
  batch, ref_params, ref_loss, ref_grads = one_device_reference(attention)
  run = trainer.build(mesh_config(sizes, attention))
  params = run.init_fn(run.rng(0))["params"]
  gate = (params["stack"]["layer_0"]["mlp"] if attention else params["mlp"])["gate"]["kernel"]
  assert gate.sharding.spec == P("fsdp", "tensor")
  assert gate.addressable_shards[0].data.shape == (16 // sizes[1], 32 // sizes[2])
  # Same values whatever the sharding (partitionable threefry), and never built on one device first.
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, ref_params)
  global_batch = sharding.global_batch_from_local(batch, run.mesh, run.rules)
  assert global_batch["inputs"].sharding.spec == P(("data", "fsdp"), None)
  loss, grads = loss_and_grads(run, params, global_batch)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=1e-7),
                         grads, ref_grads)


def test_sharded_training_matches_one_device(reference_run, tmp_path):
  ref_dir, _, _ = reference_run
  trainer.train(mesh_config((2, 2, 2)), str(tmp_path), stop_at_step=4)
  ours = metrics_lib.read_jsonl(str(tmp_path), "train")
  ref = metrics_lib.read_jsonl(ref_dir, "train")[:len(ours)]
  assert [r["step"] for r in ours] == [2, 4]
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)


def test_checkpoint_restores_onto_a_different_mesh(reference_run):
  ref_dir, _, _ = reference_run
  _, ref_params, _ = trainer.restore_params(toy_task.single_device_config(), ref_dir, toy_task.one_device())
  _, params, step = trainer.restore_params(mesh_config((1, 4, 2)), ref_dir)
  assert step == 12
  down = params["stack"]["layer_0"]["mlp"]["down"]["kernel"]
  assert down.sharding.spec == P("tensor", "fsdp") and len(down.sharding.device_set) == 8
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         params, ref_params)
