"""tools/bench_attention.py helpers: the FLOP count behind every TFLOP/s figure, and argument parsing."""

import importlib.util
import pathlib

import numpy as np
import pytest

import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, dense_mask

_PATH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_attention", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("mask", ["causal", "full", "window:7", "chunk:5", "window:2000"])
def test_unmasked_pairs_counts_the_dense_mask(bench, mask):
  # Counted in 1024-row blocks: a length over one block checks the blocking too.
  spec = bench.parse_mask(mask)
  for t in (13, 1100):
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    assert bench.unmasked_pairs(spec, t) == int(np.asarray(dense_mask(spec, pos, pos)).sum()), (mask, t)


def test_flops_forward_and_backward(bench):
  spec = MaskSpec()
  pairs = bench.unmasked_pairs(spec, 64)
  assert bench.attention_flops(spec, 2, 3, 16, 64, backward=False) == 4 * 2 * 3 * 16 * pairs
  assert bench.attention_flops(spec, 2, 3, 16, 64, backward=True) == 3.5 * 4 * 2 * 3 * 16 * pairs


def test_parsers_reject_typos(bench):
  assert bench.parse_mask("window:128") == MaskSpec(window=128)
  assert bench.parse_kernel_configs("128,64,8,2;64,64,4,3") == [
      dict(block_q=128, block_k=64, num_warps=8, num_stages=2),
      dict(block_q=64, block_k=64, num_warps=4, num_stages=3)]
  for bad in ("window", "window:x", "sliding:4", "causal:1"):
    with pytest.raises(SystemExit, match="--masks"):
      bench.parse_mask(bad)
  with pytest.raises(SystemExit, match="--kernel_configs"):
    bench.parse_kernel_configs("128,64,8")
