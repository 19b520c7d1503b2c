"""Checkpointer.restore_params: only the params of a saved train state, as numpy, checked against the
expected paths and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.train import checkpoint as ckpt_lib


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_restore_params_reads_only_the_params(tmp_path):
  params = {"enc": {"w": jnp.arange(6.0).reshape(2, 3)}, "codebook": jnp.ones((4, 2))}
  # An optimizer state the reader knows nothing about: a params-only restore must not need its structure.
  opt_state = ({"mu": jax.tree.map(jnp.zeros_like, params)}, jnp.zeros((), jnp.int32))
  with ckpt_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(3, {"step": jnp.int32(3), "params": jax.tree.map(lambda x: x - 1, params), "opt_state": opt_state},
              None)
    ckpt.save(5, {"step": jnp.int32(5), "params": params, "opt_state": opt_state}, None)
    ckpt.wait()
    step, restored = ckpt.restore_params(_abstract(params))
    assert step == 5
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))  # host arrays, no mesh needed
    np.testing.assert_array_equal(restored["enc"]["w"], params["enc"]["w"])
    _, earlier = ckpt.restore_params(_abstract(params), step=3)
    np.testing.assert_array_equal(earlier["codebook"], np.zeros((4, 2)))

    with pytest.raises(ValueError, match=r"does not hold this model's params: 1 missing \(e.g. \['dec/w'\]\)"):
      ckpt.restore_params(_abstract({**params, "dec": {"w": jnp.zeros(2)}}))
    with pytest.raises(ValueError, match=r"1 of other shapes \(e.g. \['codebook: stored \(4, 2\), expected \(8, 2\)'\]\)"):
      ckpt.restore_params(_abstract({**params, "codebook": jnp.ones((8, 2))}))

  with ckpt_lib.Checkpointer(str(tmp_path / "empty")) as ckpt, pytest.raises(FileNotFoundError, match="No checkpoint"):
    ckpt.restore_params(_abstract(params))
