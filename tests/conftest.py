"""Test-wide setup: 4 fake CPU devices for sharding tests, set before JAX is first used."""

import os

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=4'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The tests' programs are tiny, so XLA's optimisation passes cost more than they save (about a
# quarter of the suite's time); binaries started by tests inherit this too.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import pytest  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared'))
AMAZON18 = os.path.join(SHARED, 'data', 'amazon18')


@pytest.fixture
def amazon18_dir():
  """The official preprocessed Amazon data in ../shared, or a skip saying why not."""
  if not os.path.isdir(AMAZON18):
    pytest.skip(f'official Amazon data not found at {AMAZON18} (../shared is absent)')
  return AMAZON18
