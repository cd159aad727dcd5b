"""Shared fixtures for tests and smoke runs: tiny generated data in the official layout."""

from minirec_jax.testing.official_fixture import write_official_layout
from minirec_jax.testing.official_fixture import write_synthetic_layout
