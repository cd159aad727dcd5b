"""timing.timed_calls: one untimed warm-up call, then one duration per timed call."""

from minirec_jax.infra import timing


def test_warm_up_is_not_timed():
  calls = []
  times = timing.timed_calls(lambda: calls.append(1), repeats=3)
  assert len(calls) == 4 and len(times) == 3
  assert all(t >= 0.0 for t in times)
