"""Checkpoint restore refuses a params layout that is not the model's (scanned vs unscanned stacks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.models import layers
from hat_jax.train import checkpoint as ckpt_lib


def _state(params):
  return {"step": jnp.zeros((), jnp.int32), "params": params}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_scanned_and_unscanned_checkpoints_do_not_mix(tmp_path):
  unscanned = {"backbone": {f"layer_{i}": {"w": jnp.full((2, 3), float(i))} for i in range(3)}}
  scanned = layers.scan_layer_params(unscanned)
  assert scanned["backbone"]["layers"]["w"].shape == (3, 2, 3)
  with ckpt_lib.Checkpointer(str(tmp_path / "a")) as ckpt:
    ckpt.save(1, _state(unscanned), {"step": 1})
    ckpt.wait()
    with pytest.raises(ValueError, match=r"written with unscanned layers, but this config builds scanned ones.*"
                                         r"'backbone/layer_0/w'.*'backbone/layers/w'.*scan=False.*scan_layer_params"):
      ckpt.restore(_abstract(_state(scanned)))
    _, state, _ = ckpt.restore(_abstract(_state(unscanned)))  # the matching layout restores
  # The conversion is exact both ways, so a run can move between layouts deliberately.
  np.testing.assert_array_equal(layers.scan_layer_params(state["params"])["backbone"]["layers"]["w"],
                                scanned["backbone"]["layers"]["w"])
  with ckpt_lib.Checkpointer(str(tmp_path / "b")) as ckpt:
    ckpt.save(1, _state(scanned), {"step": 1})
    ckpt.wait()
    with pytest.raises(ValueError, match=r"written with scanned layers.*scan=True.*unscan_layer_params"):
      ckpt.restore(_abstract(_state(unscanned)))
    with pytest.raises(ValueError, match=r"does not hold this model's params: 1 missing \(e.g. \['decoder/w'\]\)"):
      ckpt.restore(_abstract(_state({**scanned, "decoder": {"w": jnp.zeros(2)}})))
