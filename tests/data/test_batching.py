"""hat_jax.data.batching: the per-process share of a global batch, rows -> batch, prompts -> padded array."""

import numpy as np
import pytest

from hat_jax.data.batching import per_process_batch_size, stack_prompts, stack_rows


def test_per_process_batch_size():
  assert per_process_batch_size(8, 1) == 8 and per_process_batch_size(8, 4) == 2
  with pytest.raises(ValueError, match="global batch_size 6 must be divisible by the process count 4"):
    per_process_batch_size(6, 4)


def test_stack_rows():
  batch = stack_rows([{"a": np.arange(3), "b": np.zeros(2)}, {"a": np.arange(3) + 3, "b": np.ones(2)}])
  np.testing.assert_array_equal(batch["a"], [[0, 1, 2], [3, 4, 5]])
  assert batch["b"].shape == (2, 2)
  with pytest.raises(ValueError, match="at least one row"):
    stack_rows([])


def test_stack_prompts():
  prompt, lengths = stack_prompts([b"ab", [7, 8, 9], bytearray(b"c")], 256)
  np.testing.assert_array_equal(prompt, [[97, 98, 256], [7, 8, 9], [99, 256, 256]])
  np.testing.assert_array_equal(lengths, [2, 3, 1])
  assert prompt.dtype == lengths.dtype == np.int32
  with pytest.raises(ValueError, match="no empty ones"):
    stack_prompts([b"ab", b""], 256)
  with pytest.raises(ValueError, match="at least one prompt"):
    stack_prompts([], 256)
