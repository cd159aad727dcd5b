"""Power-law fits recover planted exponents."""

import numpy as np
import pytest

from minirec_jax.evaluation import scaling


def test_one_variable_fit_recovers_exponent():
  x = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
  noise = np.exp(np.random.default_rng(0).normal(0, 0.01, 5))
  fit = scaling.fit_power_law(x, 7.0 * x ** -0.12 * noise)
  assert fit['alpha'] == pytest.approx(0.12, abs=0.01)
  assert fit['alpha_ci95'][0] < 0.12 < fit['alpha_ci95'][1]
  assert fit['r2_log'] > 0.95
  np.testing.assert_allclose(scaling.predict(fit, x), 7.0 * x ** -0.12, rtol=0.03)


def test_two_variable_fit_recovers_both_exponents():
  n, d = np.meshgrid([1e5, 1e6, 1e7], [1e4, 3e4, 1e5])
  loss = 5.0 * n ** -0.1 * d ** -0.2
  fit = scaling.fit_two_variable(n.ravel(), d.ravel(), loss.ravel())
  assert fit['alpha'] == pytest.approx(0.1, abs=1e-6)
  assert fit['beta'] == pytest.approx(0.2, abs=1e-6)


def test_bad_input():
  with pytest.raises(ValueError):
    scaling.fit_power_law([1.0], [2.0])
