"""host_memory: when a binary re-executes itself with glibc's huge-page tunable, and that it
does."""

import os
import subprocess
import sys

import pytest

from minirec_jax.infra import host_memory

NEW_GLIBC = (2, 36)


def test_adds_the_tunable_and_keeps_other_tunables():
  env = host_memory.environment_with_huge_pages({'PATH': '/bin'}, NEW_GLIBC, True)
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  env = host_memory.environment_with_huge_pages(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, NEW_GLIBC, True)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ,glibc,offers', [
    ({'MINIREC_HUGE_PAGES': '0'}, NEW_GLIBC, True),                    # opted out
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, NEW_GLIBC, True),   # user's own choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, NEW_GLIBC, True),   # already re-executed
    ({}, (2, 34), True),                                               # glibc without it
    ({}, None, True),                                                  # not glibc
    ({}, NEW_GLIBC, False),                                            # kernel THP off
])
def test_no_reexecution(environ, glibc, offers):
  assert host_memory.environment_with_huge_pages(environ, glibc, offers) is None


@pytest.mark.parametrize('content,expected', [
    ('always [madvise] never\n', True), ('[always] madvise never\n', True),
    ('always madvise [never]\n', False)])
def test_kernel_setting(tmp_path, content, expected):
  path = tmp_path / 'enabled'
  path.write_text(content)
  assert host_memory.kernel_offers_huge_pages(str(path)) is expected
  assert not host_memory.kernel_offers_huge_pages(str(tmp_path / 'missing'))


def test_a_binary_reexecutes_itself_once_with_the_tunable(tmp_path):
  binary = tmp_path / 'binary.py'
  binary.write_text('import os\nfrom minirec_jax.infra import host_memory\n'
                    'print("start", flush=True)\n'
                    'host_memory.use_huge_pages(__file__)\n'
                    'print(os.environ.get("GLIBC_TUNABLES"))\n')
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'MINIREC_HUGE_PAGES')}
  run = lambda: subprocess.run([sys.executable, str(binary)], env=env, capture_output=True,
                               text=True, check=True).stdout.split()
  wanted = host_memory.environment_with_huge_pages(
      env, host_memory.glibc_version(), host_memory.kernel_offers_huge_pages())
  if wanted is None:
    assert run() == ['start', 'None']
  else:  # the command ran twice: once as started, once re-executed with the tunable
    assert run() == ['start', 'start', 'glibc.malloc.hugetlb=1']
  env['MINIREC_HUGE_PAGES'] = '0'
  assert run() == ['start', 'None']


def test_a_binary_main_called_from_another_program_does_not_reexecute(tmp_path, monkeypatch):
  # Here the running program is pytest, not this file: nothing may happen (else pytest would
  # restart). execve is recorded instead of run, and re-execution is made wanted, so the only
  # thing that can stop it is the check that the binary is the running program.
  calls = []
  monkeypatch.setattr(host_memory.os, 'execve', lambda *args: calls.append(args))
  monkeypatch.setattr(host_memory, 'environment_with_huge_pages',
                      lambda *args: {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})
  host_memory.use_huge_pages(__file__)
  host_memory.use_huge_pages(str(tmp_path / 'some_binary.py'))
  assert calls == []
  main_file = getattr(sys.modules['__main__'], '__file__', None)
  if main_file is not None:  # the same call from the running program does re-execute
    host_memory.use_huge_pages(main_file)
    assert len(calls) == 1 and calls[0][2] == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
