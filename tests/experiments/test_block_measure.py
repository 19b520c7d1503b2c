"""experiments/block_throughput/measure.py: the largest-batch search of the throughput protocol."""

import pytest

from experiments.block_throughput import measure

MIB = 2**20


def _counting(fn):
  calls = []

  def bytes_at(batch):
    calls.append(batch)
    return fn(batch)
  return bytes_at, calls


@pytest.mark.parametrize("budget_mib, max_batch, want", [(100, 1024, 32), (1000, 1024, 512), (1000, 256, 256),
                                                         (12, 1024, 1), (100, 1, 1)])
def test_affine_memory_is_predicted_in_few_compiles(budget_mib, max_batch, want):
  bytes_at, calls = _counting(lambda b: 10 * MIB + b * 3 * MIB // 2)
  batch, used = measure.largest_batch(bytes_at, budget_mib * MIB, max_batch)
  assert batch == want and used == 10 * MIB + want * 3 * MIB // 2
  assert len(calls) <= 4, calls  # batch 1, batch 2, the prediction, one check above it


def test_prediction_is_verified_when_memory_is_not_affine():
  # Above 16 samples XLA (here: a fake) switches to a layout that costs 3x per sample: the affine
  # prediction from batches 1 and 2 is too optimistic and must be halved down to what really fits.
  bytes_at, _ = _counting(lambda b: b * MIB if b <= 16 else 3 * b * MIB)
  assert measure.largest_batch(bytes_at, 64 * MIB, 1024)[0] == 16
  # Sub-linear growth: the prediction is too pessimistic and must be doubled up.
  bytes_at, _ = _counting(lambda b: b * MIB if b <= 2 else 8 * MIB + b * MIB // 8)
  assert measure.largest_batch(bytes_at, 40 * MIB, 1024)[0] == 256


def test_batch_one_over_budget_says_how_to_fix():
  with pytest.raises(ValueError, match="raise --memory_mib"):
    measure.largest_batch(lambda b: 2 * MIB, MIB, 64)


def test_settings_parse_and_reject_typos():
  from experiments.block_throughput import benchmark
  assert benchmark.parse_settings("prefill-heavy=2048/128,decode-heavy=128/2048") == {
      "prefill-heavy": (2048, 128), "decode-heavy": (128, 2048)}
  for bad in ("decode-heavy=128,2048", "decode-heavy=128/0", "", "x=1/2/3"):
    with pytest.raises(SystemExit, match="settings"):
      benchmark.parse_settings(bad)
