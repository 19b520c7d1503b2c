"""Bad configs fail early with messages that say what was wrong and how to fix it."""

import jax
import pytest

import toy_task
from configs import common
from hat_jax.train import trainer


def test_mesh_sizes_must_match_device_count():
  config = toy_task.toy_config()
  config.mesh.data, config.mesh.fsdp = 3, 1
  with pytest.raises(ValueError, match=r"multiply to 3, but there are 8 devices.*-1 to auto-fill"):
    trainer.build(config)
  config.mesh.data, config.mesh.fsdp = -1, 3
  with pytest.raises(ValueError, match=r"cannot fill 'data' \(-1\)"):
    trainer.build(config)


def test_unknown_logical_axis_name_is_an_error():
  config = toy_task.toy_config()
  config.logical_axis_rules = [r for r in common.default_rules() if r[0] != "mlp"]
  with pytest.raises(ValueError, match=r"without a rule.*'mlp' \(e\.g\. on params/stack/layer_0/mlp/"):
    trainer.build(config)


def test_unknown_mesh_axis_in_rules_is_an_error():
  config = toy_task.toy_config()
  config.logical_axis_rules = common.default_rules(("mlp", "model"))
  with pytest.raises(ValueError, match=r"'mlp' -> 'model' names mesh axes \['model'\]"):
    trainer.build(config)


def test_indivisible_sharded_dim_is_an_error():
  config = toy_task.toy_config()
  config.mesh.data, config.mesh.tensor = 1, 8  # 2 heads cannot split 8 ways
  with pytest.raises(ValueError, match=r"does not divide the mesh.*'heads' \(size 2\) over mesh axes \('tensor',\)"):
    trainer.build(config)


def test_unknown_task_lists_known_ones():
  config = toy_task.toy_config()
  config.task = "no_such_task"
  with pytest.raises(ValueError, match=r"Unknown config.task 'no_such_task'; known tasks: \[.*'hat'"):
    trainer.build(config)


def test_batch_must_split_over_batch_shards(tmp_path):
  config = toy_task.toy_config(batch_size=4)  # 8-way data parallel
  with pytest.raises(ValueError, match=r"batch_size=4 must be divisible by the 8 batch shards"):
    trainer.train(config, str(tmp_path))


def test_common_blocks():
  assert common.parse_arg("tiny", size="base", seed=0).size == "tiny"
  arg = common.parse_arg("size=s,seed=3,runlocal", size="base", seed=0, runlocal=False)
  assert (arg.size, arg.seed, arg.runlocal) == ("s", 3, True)
  with pytest.raises(ValueError, match="Unknown config argument 'nope'"):
    common.parse_arg("nope=1", size="base")
  with pytest.raises(ValueError, match=r"Unknown config.train fields \['lr'\]"):
    common.train_defaults(lr=1.0)
  rules = dict(common.default_rules(("kv_heads", None), ("codebook", "tensor")))
  assert rules["kv_heads"] is None and rules["codebook"] == "tensor" and rules["embed"] == "fsdp"
  assert jax.device_count() == 8


def test_device_peak_table():
  from hat_jax.train import metrics  # pylint: disable=g-import-not-at-top
  assert metrics.device_peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
  assert metrics.device_peak_flops("TPU v5 lite")[0] == 197e12
  assert metrics.device_peak_flops("cpu") is None
