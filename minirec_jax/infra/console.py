"""What a binary prints: progress, warnings and results on the console; the full log in a file.

A binary that writes into a workdir calls `setup(workdir)` at the start of `main` (after
`host_memory.use_huge_pages`). From then on absl's handler writes every log record at the
logging verbosity (INFO by default: ours, orbax, TFDS, jax) to `<workdir>/log.txt`, appended
across runs and resumes, and copies to stderr only warnings and worse (absl's --stderrthreshold,
made 'warning' unless given) and the INFO lines logged through `info`: stage and progress lines.
absl's own flags bring the library logs back to the console: --alsologtostderr (the file and the
console), --stderrthreshold=info (the same), --logtostderr (the console only, no file).
Without `setup` (library use, tests) nothing changes: `info` is a plain `logging.info`.
"""

from __future__ import annotations

import contextlib
import io
import logging as std_logging
import os
import shlex
import sys
import traceback
from typing import Iterator

from absl import flags
from absl import logging
from absl.logging import converter

LOG_FILE = 'log.txt'
_SHOW = 'minirec_console'  # LogRecord attribute: this INFO line belongs on the console too
_FORMAT = std_logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S')
_FLAGS = flags.FLAGS

# What setup changed, so reset() can put it back: None while not set up.
_active: dict | None = None


@logging.skip_log_prefix
def info(msg: str, *args) -> None:
  """Logs an INFO line that also goes to the console (a stage or progress line)."""
  logging.info(msg, *args, extra={_SHOW: True})


def _threshold() -> int:
  return converter.string_to_standard(_FLAGS['stderrthreshold'].value)


def _absl_prints(levelno: int) -> bool:
  """Whether absl's handler already copies a record of this level to stderr."""
  stream = logging.get_absl_handler().python_handler.stream
  return (_FLAGS['logtostderr'].value or _FLAGS['alsologtostderr'].value or
          stream in (sys.stderr, sys.__stderr__) or levelno >= _threshold())


class _ConsoleHandler(std_logging.Handler):
  """Prints the records marked by `info` that absl's handler leaves in the file only."""

  def __init__(self):
    super().__init__(std_logging.INFO)
    self.setFormatter(_FORMAT)

  def filter(self, record: std_logging.LogRecord) -> bool:
    return getattr(record, _SHOW, False) and not _absl_prints(record.levelno)

  def emit(self, record: std_logging.LogRecord) -> None:
    try:
      stream = sys.stderr  # looked up each time, so redirections of stderr are followed
      stream.write(self.format(record) + '\n')
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def log_path() -> str | None:
  """The log file that `setup` opened, or None."""
  return _active['path'] if _active else None


def logs_to_file() -> bool:
  """Whether INFO lines go to the log file only (set up, and no flag asks for them on stderr)."""
  return _active is not None and not _absl_prints(std_logging.INFO)


def _write_raw(text: str) -> None:
  """Appends text to the log file as it is, between whole log records."""
  handler = logging.get_absl_handler().python_handler
  handler.acquire()
  try:
    handler.stream.write(text)
    handler.stream.flush()
  finally:
    handler.release()


class _LogWriter(io.TextIOBase):
  """A text stream that appends to the log file."""

  @property
  def encoding(self) -> str:
    return 'utf-8'

  def writable(self) -> bool:
    return True

  def write(self, text: str) -> int:
    if _active is not None:
      _write_raw(text)
    return len(text)


@contextlib.contextmanager
def stdout_to_log() -> Iterator[None]:
  """Sends what is printed to stdout inside the block to the log file instead of the console.

  For the tables the pieces of a bigger run print (a pipeline's stages): the run prints its own
  summary afterwards. A no-op unless INFO lines go to the file only (see `logs_to_file`).
  """
  if not logs_to_file():
    yield
    return
  sys.stdout.flush()
  with contextlib.redirect_stdout(_LogWriter()):
    yield


def _file_name() -> str:
  # Processes of a multi-process run share the workdir: one file each, process 0's the plain one.
  process = (_FLAGS['process_id'].value if 'process_id' in _FLAGS else None)
  if process is None:
    process = int(os.environ.get('JAX_PROCESS_ID') or 0)
  return LOG_FILE if process == 0 else f'log.{process}.txt'


def setup(workdir: str | None) -> str | None:
  """Sends the library logs of this binary to `<workdir>/log.txt` (see the module docstring).

  Call it from `main` (absl flags parsed); calling it again first undoes the previous call.

  Args:
    workdir: the binary's output folder (created if missing); None: leave logging as it is.

  Returns:
    The log file's path; None when logging stays on stderr: no workdir, --logtostderr, flags
    not parsed, or a log file that cannot be opened (a warning says why).
  """
  global _active
  reset()
  if not workdir or not _FLAGS.is_parsed() or _FLAGS['logtostderr'].value:
    return None
  path = os.path.join(workdir, _file_name())
  try:
    os.makedirs(workdir, exist_ok=True)
    log_file = open(path, 'a', encoding='utf-8', buffering=1)  # pylint: disable=consider-using-with
  except OSError as exc:
    logging.warning('cannot write the log file %s (%s); logging to stderr', path, exc)
    return None
  logging.use_absl_handler()  # app.run() has installed it; a no-op then
  handler = logging.get_absl_handler().python_handler
  console = _ConsoleHandler()
  _active = {'path': path, 'file': log_file, 'stream': handler.setStream(log_file),
             'threshold': _FLAGS['stderrthreshold'].value, 'console': console,
             'excepthook': sys.excepthook}
  if not _FLAGS['stderrthreshold'].present:
    _FLAGS.stderrthreshold = 'warning'  # absl's default, 'fatal', would hide warnings
  std_logging.root.addHandler(console)
  std_logging.captureWarnings(True)  # Python warnings: to the file as well as the console
  sys.excepthook = _log_exception
  logging.info('command: %s (pid %d)', shlex.join(sys.argv), os.getpid())
  if logs_to_file():
    info('full log: %s (--alsologtostderr prints it here too)', path)
  return path


def _log_exception(exc_type, exc, tb) -> None:
  """Puts an uncaught exception's traceback in the log file too, then reports it as before."""
  if _active is not None:
    _write_raw(''.join(traceback.format_exception(exc_type, exc, tb)))
    _active['excepthook'](exc_type, exc, tb)
  else:
    sys.__excepthook__(exc_type, exc, tb)


def reset() -> None:
  """Undoes `setup`: logging goes back to stderr as absl's handler does by default."""
  global _active
  if _active is None:
    return
  active, _active = _active, None
  std_logging.root.removeHandler(active['console'])
  std_logging.captureWarnings(False)
  if sys.excepthook is _log_exception:
    sys.excepthook = active['excepthook']
  logging.get_absl_handler().python_handler.setStream(active['stream'])
  _FLAGS.stderrthreshold = active['threshold']
  active['file'].close()
