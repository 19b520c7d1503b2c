"""Jitted flax init/apply for tests.

Eager `model.init` / `model.apply` dispatch (and compile) every primitive separately: on CPU that made
one HAT init take ~18 s against ~4 s as one jitted program. Tests that only need the values use these;
with the session's persistent compilation cache, repeating a call at the same shapes is cheap.
"""

import functools

import jax
import numpy as np


def _split(kwargs):
  """Array-valued (and None) kwargs are traced; the rest (flags, strings) are baked in as static."""
  is_data = lambda v: v is None or isinstance(v, (jax.Array, np.ndarray, tuple, list, dict))
  return ({k: v for k, v in kwargs.items() if is_data(v)}, {k: v for k, v in kwargs.items() if not is_data(v)})


def init(model, rng, *args, method=None, **kwargs):
  """`model.init(rng, *args, method=method, **kwargs)` as one jitted program."""
  traced, static = _split(kwargs)
  return jax.jit(functools.partial(model.init, method=method, **static))(rng, *args, **traced)


def apply(model, params, *args, method=None, **kwargs):
  """`model.apply(params, *args, method=method, **kwargs)` as one jitted program."""
  traced, static = _split(kwargs)
  return jax.jit(functools.partial(model.apply, method=method, **static))(params, *args, **traced)
