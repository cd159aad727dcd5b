"""host_memory: when a binary re-executes itself with glibc's huge-page tunable, and that it does."""

import os
import subprocess
import sys

import pytest

from minirec_jax import host_memory

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


def test_a_binary_reexecutes_itself_once_with_the_tunable():
  code = ('import os; from minirec_jax import host_memory; print("start", flush=True); '
          'host_memory.use_huge_pages(); print(os.environ.get("GLIBC_TUNABLES"))')
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'MINIREC_HUGE_PAGES')}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  wanted = host_memory.environment_with_huge_pages(
      env, host_memory.glibc_version(), host_memory.kernel_offers_huge_pages())
  if wanted is None:
    assert out == ['start', 'None']
  else:  # the command ran twice: once as started, once re-executed with the tunable
    assert out == ['start', 'start', 'glibc.malloc.hugetlb=1']
  env['MINIREC_HUGE_PAGES'] = '0'
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ['start', 'None']
