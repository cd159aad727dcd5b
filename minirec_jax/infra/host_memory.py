"""Transparent huge pages for host memory: a process-level setting for the CPU binaries.

XLA:CPU allocates fresh buffers for the activations of every step. With 4 KiB pages, touching a
fresh buffer page-faults every 4 KiB and walks the TLB often; huge pages make the training
steps measurably faster (docs/RESULTS.md, "Host memory"). glibc
(>= 2.35) can ask the kernel for transparent huge pages on its allocations with the tunable
`glibc.malloc.hugetlb=1`, but tunables are read only when a process starts. So a binary calls
`use_huge_pages(__file__)` first thing: if the tunable is missing it re-executes the same
command line with it set (the process keeps its pid; nothing has run yet). Set
MINIREC_HUGE_PAGES=0 to opt out; the library itself never re-executes anything.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'MINIREC_HUGE_PAGES'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None on another C library or OS."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  major, minor = version.split('.')[:2]
  return (int(major), int(minor)) if name == 'glibc' else None


def kernel_offers_huge_pages(setting_file: str = _THP_SETTING) -> bool:
  """True when transparent huge pages are 'always' or 'madvise' (not 'never' or absent)."""
  try:
    with open(setting_file) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def environment_with_huge_pages(environ: Mapping[str, str],
                                glibc: tuple[int, int] | None,
                                kernel_offers: bool) -> dict[str, str] | None:
  """The environment to re-execute with, or None when no re-execution is wanted.

  None when: opted out (MINIREC_HUGE_PAGES=0), the tunable is already set (to any value, so a
  user's own choice wins and a re-executed process never loops), glibc is older than 2.35 or
  absent, or the kernel has transparent huge pages off.
  """
  tunables = environ.get('GLIBC_TUNABLES', '')
  if environ.get(OPT_OUT, '1') == '0' or TUNABLE + '=' in tunables:
    return None
  if glibc is None or glibc < (2, 35) or not kernel_offers:
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}=1' if tunables else f'{TUNABLE}=1'
  return env


def use_huge_pages(binary_file: str) -> None:
  """Re-executes this process's command line with huge pages on, when that is wanted (above).

  Call it as `use_huge_pages(__file__)` before any real work (first line of a binary's main):
  everything done before it is done twice. It acts only when `binary_file` is the program
  being run (`__main__`), so calling a binary's main from another program (a test runner, a
  notebook) never restarts that program.
  """
  main_file = getattr(sys.modules.get('__main__'), '__file__', None)
  if main_file is None or os.path.realpath(main_file) != os.path.realpath(binary_file):
    return
  env = environment_with_huge_pages(os.environ, glibc_version(), kernel_offers_huge_pages())
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def active() -> bool:
  """Whether this process runs with glibc asking for huge pages (for benchmark records)."""
  return TUNABLE + '=1' in os.environ.get('GLIBC_TUNABLES', '').split(':')
