"""Wall-clock timing of repeated calls, for the benchmark binaries in experiments/."""

import time
from typing import Callable


def timed_calls(fn: Callable[[], object], repeats: int) -> list[float]:
  """Calls `fn` once untimed (warm-up: compilation, caches), then `repeats` times; returns the
  seconds of each timed call. `fn` must block until its work is done."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times
