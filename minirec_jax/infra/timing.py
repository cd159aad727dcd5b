"""Wall-clock timing of repeated calls and the machine record, for the benchmark binaries."""

import datetime
import os
import platform
import subprocess
import time
from typing import Callable

from minirec_jax.infra import config_utils
from minirec_jax.infra import host_memory


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


def machine_record() -> dict:
  """Where and when a benchmark ran, the same keys in every benchmark's output.

  machine (host, architecture, cpu count), accelerator (device kind of device 0), huge_pages
  (whether this process runs with transparent huge pages), date (UTC), commit (git HEAD of the
  working tree, '+dirty' with uncommitted changes; None outside a git checkout), versions.
  """
  import jax  # here, so that the module stays importable without initialising JAX

  git = lambda *args: subprocess.run(['git', *args], cwd=config_utils.REPO_ROOT, check=True,
                                     capture_output=True, text=True).stdout.strip()
  try:
    commit = git('rev-parse', 'HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no')
    commit += '+dirty' if dirty else ''
  except (OSError, subprocess.CalledProcessError):
    commit = None
  return {
      'machine': f'{platform.node()} {platform.machine()} {os.cpu_count()} cpus',
      'accelerator': jax.devices()[0].device_kind,
      'huge_pages': host_memory.active(),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
      'commit': commit,
      'versions': {'python': platform.python_version(), 'jax': jax.__version__},
  }
