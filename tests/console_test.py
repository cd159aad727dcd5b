"""console.setup: library INFO logs to <workdir>/log.txt, progress and warnings on the console."""

import io
import logging as std_logging
import os
import subprocess
import sys

import pytest

from minirec_jax.infra import console
from minirec_jax.infra import metric_logging

# A binary in miniature: absl flags, setup, then one line of each kind.
_BINARY = """
import logging as std_logging
import sys
import warnings
from absl import app
from absl import logging
from minirec_jax.infra import console
from minirec_jax.infra import metric_logging

def main(argv):
  console.setup(argv[1])
  std_logging.getLogger('orbax.fake').info('library info line')
  logging.info('absl info line')
  logging.warning('3 rows were skipped')
  warnings.warn('python warning line')
  progress = metric_logging.Progress(4, 'loop', unit='step')
  progress.update(4)
  progress.close()
  with console.stdout_to_log():
    print('a stage table')
  print('the results table')
  if argv[2:] == ['crash']:
    raise RuntimeError('boom')

app.run(main)
"""


def _run(workdir, *args):
  return subprocess.run([sys.executable, '-c', _BINARY, str(workdir), *args],
                        capture_output=True, text=True, env={**os.environ, 'PYTHONWARNINGS': ''})


def _log(workdir):
  with open(workdir / console.LOG_FILE, encoding='utf-8') as f:
    return f.read()


def test_info_goes_to_the_file_warnings_and_progress_to_both(tmp_path):
  done = _run(tmp_path / 'run')
  assert done.returncode == 0, done.stderr
  log = _log(tmp_path / 'run')
  for line in ('library info line', 'absl info line', '3 rows were skipped',
               'python warning line', 'loop: 4/4 step', 'a stage table', 'command: '):
    assert line in log
  assert 'library info line' not in done.stderr and 'absl info line' not in done.stderr
  assert '3 rows were skipped' in done.stderr and 'python warning line' in done.stderr
  assert f'full log: {tmp_path / "run" / console.LOG_FILE}' in done.stderr
  # The loop's end and close say the same: one line.
  assert done.stderr.count('loop: 4/4 step (100%)') == 1 and log.count('loop: 4/4 step') == 1
  assert done.stdout == 'the results table\n'
  assert 'the results table' not in log


def test_reruns_append_to_the_same_file(tmp_path):
  for _ in range(2):
    assert _run(tmp_path).returncode == 0
  assert _log(tmp_path).count('absl info line') == 2


@pytest.mark.parametrize('flag', ['--alsologtostderr', '--stderrthreshold=info'])
def test_verbose_flags_print_everything_and_keep_the_file(tmp_path, flag):
  done = _run(tmp_path, flag)
  assert done.returncode == 0, done.stderr
  for line in ('library info line', 'absl info line', '3 rows were skipped', 'loop: 4/4 step'):
    assert done.stderr.count(line) == 1 and line in _log(tmp_path)
  assert 'a stage table' in done.stdout and 'a stage table' not in _log(tmp_path)


def test_logtostderr_prints_everything_and_writes_no_file(tmp_path):
  done = _run(tmp_path / 'run', '--logtostderr')
  assert done.returncode == 0, done.stderr
  assert 'library info line' in done.stderr and 'loop: 4/4 step' in done.stderr
  assert not os.path.exists(tmp_path / 'run' / console.LOG_FILE)


def test_an_uncaught_exception_is_in_the_file_and_on_the_console(tmp_path):
  done = _run(tmp_path, 'crash')
  assert done.returncode != 0
  assert 'RuntimeError: boom' in done.stderr and 'RuntimeError: boom' in _log(tmp_path)


def test_without_setup_nothing_is_redirected(caplog, capsys):
  # Library use (tests, notebooks): console.info is a plain INFO line, stdout stays stdout.
  caplog.set_level(std_logging.INFO, logger='absl')
  assert console.log_path() is None and not console.logs_to_file()
  console.info('stage %s: starting', 'x')
  progress = metric_logging.Progress(3, 'loop', unit='step', stream=io.StringIO())
  for _ in range(3):
    progress.update()
  progress.close()
  messages = [r.getMessage() for r in caplog.records]
  assert messages[0] == 'stage x: starting' and len(messages) == 2
  assert messages[1].startswith('loop: 3/3 step (100%)')
  assert all(r.levelno == std_logging.INFO for r in caplog.records)
  with console.stdout_to_log():
    print('still on stdout')
  assert capsys.readouterr().out == 'still on stdout\n'


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_on_a_terminal_progress_redraws_one_line(caplog):
  caplog.set_level(std_logging.INFO, logger='absl')
  terminal = _Terminal()
  progress = metric_logging.Progress(2, 'loop', unit='step', stream=terminal)
  progress.update(2)
  progress.close()
  assert terminal.getvalue().startswith('\rloop: 2/2 step (100%)')
  assert terminal.getvalue().endswith('\n') and terminal.getvalue().count('\n') == 1
  assert not caplog.records  # the bar is the console line; no log file to write to
