"""Metric writers (JSONL, optional TensorBoard via tensorboardX) and progress reporting.

`MetricWriter` appends one JSON object per call to `<workdir>/metrics.jsonl` (flushed each
time, so a killed run keeps every row written before the kill) and mirrors scalars to
TensorBoard event files when tensorboardX is installed and requested. `Progress` wraps long
loops: a live bar with rate and ETA on a terminal, periodic console lines otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable, Iterator

from absl import logging
import numpy as np

from minirec_jax.infra import console


class NonFiniteError(FloatingPointError):
  """A metric became NaN or Inf; the run stops and keeps its last good checkpoint."""


def _plain(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricWriter:
  """Appends metric rows to metrics.jsonl; optionally writes TensorBoard scalars."""

  def __init__(self, workdir: str, *, tensorboard: bool = False, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
    if enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter  # optional dependency
      except ImportError:
        logging.warning('tensorboardX is not installed; writing metrics.jsonl only')
      else:
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    row = {f'{prefix}{k}': _plain(v) for k, v in metrics.items()}
    if self.enabled:
      with open(self.path, 'a', encoding='utf-8') as f:
        f.write(json.dumps({'step': int(step), 'time': time.time(), **row}) + '\n')
      if self._tb is not None:
        for key, value in row.items():
          if isinstance(value, (int, float)):
            self._tb.add_scalar(key, value, step)
        self._tb.flush()
    return row

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def check_finite(step: int, metrics: dict[str, Any]) -> None:
  """Raises NonFiniteError naming the first NaN/Inf metric."""
  for key, value in metrics.items():
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      raise NonFiniteError(f'step {step}: metric {key!r} is {arr.tolist()}; stopping. The last '
                           'good checkpoint is kept; lower the learning rate or check the data.')


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """Progress of a loop of known (or unknown) length, with rate and ETA.

  On a terminal it redraws one line on stderr; otherwise it logs a line every `log_every_s`
  seconds and at the end through `console.info`, so the lines reach the console (and the log
  file) of a binary that set one up. On a terminal the log file, when there is one, gets the
  same periodic lines.
  """

  def __init__(self, total: int | None, desc: str, *, unit: str = 'it', start: int = 0,
               log_every_s: float = 30.0, stream=None):
    self.total, self.desc, self.unit = total, desc, unit
    self.count = start
    self._start_count = start
    self._stream = stream or sys.stderr
    self._tty = hasattr(self._stream, 'isatty') and self._stream.isatty()
    self._t0 = self._drawn = self._logged = time.perf_counter()
    self._log_every = log_every_s
    self._logged_count = None  # the count of the last line logged

  def update(self, n: int = 1) -> None:
    self.count += n
    now = time.perf_counter()
    finished = bool(self.total) and self.count >= self.total
    if self._tty and (now - self._drawn >= 0.2 or finished):
      self._draw(now)
    if now - self._logged >= self._log_every or finished:
      self._log(now)

  def line(self, now: float | None = None) -> str:
    elapsed = (now or time.perf_counter()) - self._t0
    done = self.count - self._start_count
    rate = done / elapsed if elapsed > 0 else 0.0
    if self.total:
      eta = (self.total - self.count) / rate if rate > 0 else float('inf')
      return (f'{self.desc}: {self.count}/{self.total} {self.unit} '
              f'({100 * self.count / self.total:.0f}%) {rate:.2f} {self.unit}/s '
              f'elapsed {_format_seconds(elapsed)} eta {_format_seconds(eta)}')
    return f'{self.desc}: {self.count} {self.unit} {rate:.2f} {self.unit}/s'

  def _draw(self, now: float) -> None:
    self._drawn = now
    self._stream.write('\r' + self.line(now))
    self._stream.flush()

  def _log(self, now: float) -> None:
    self._logged = now
    if self._logged_count == self.count:
      return  # the last line said the same (the loop's end, then close)
    self._logged_count = self.count
    if not self._tty:
      console.info('%s', self.line(now))
    elif console.logs_to_file():  # the bar is on the console already
      logging.info('%s', self.line(now))

  def close(self) -> None:
    now = time.perf_counter()
    self._log(now)
    if self._tty:
      self._draw(now)
      self._stream.write('\n')
      self._stream.flush()


def track(iterable: Iterable, total: int | None = None, desc: str = '', **kwargs) -> Iterator:
  """Iterates `iterable` while reporting progress."""
  if total is None and hasattr(iterable, '__len__'):
    total = len(iterable)
  progress = Progress(total, desc, **kwargs)
  for item in iterable:
    yield item
    progress.update()
  progress.close()
