import pytest

from hat_jax.timing import wall_times


def test_wall_times_warms_up_once_then_times_each_repeat():
  calls = []
  times = wall_times(lambda x: calls.append(x) or x, 3, repeats=4)
  assert calls == [3] * 5 and len(times) == 4 and all(t >= 0 for t in times)


def test_wall_times_needs_a_repeat():
  with pytest.raises(ValueError, match="repeats must be >= 1"):
    wall_times(lambda: 0, repeats=0)
