"""Scaling-law fits: L = a * X^-alpha (one variable) and L = a * N^-alpha * D^-beta (two).

Fits are least squares in log space. Each exponent comes with its standard error and a 95%
interval (normal approximation), and the fit with R^2 in log space, so a sweep's report says
how much the exponents can be trusted.
"""

from __future__ import annotations

import numpy as np


def _least_squares(features: np.ndarray, target: np.ndarray) -> dict:
  """Ordinary least squares with coefficient standard errors. features: `[n, p]`."""
  n, p = features.shape
  coef, *_ = np.linalg.lstsq(features, target, rcond=None)
  residual = target - features @ coef
  dof = max(n - p, 1)
  sigma2 = float(residual @ residual) / dof
  cov = sigma2 * np.linalg.pinv(features.T @ features)
  total = float(((target - target.mean()) ** 2).sum())
  r2 = 1.0 - float(residual @ residual) / total if total > 0 else float('nan')
  return {'coef': coef, 'stderr': np.sqrt(np.maximum(np.diag(cov), 0.0)), 'r2': r2, 'n': n}


def fit_power_law(x, loss) -> dict:
  """loss = a * x^-alpha. Needs >= 3 points for an error estimate."""
  x, loss = np.asarray(x, float), np.asarray(loss, float)
  if len(x) < 2 or np.any(x <= 0) or np.any(loss <= 0):
    raise ValueError('need >= 2 points with positive x and loss')
  fit = _least_squares(np.stack([np.ones_like(x), np.log(x)], 1), np.log(loss))
  alpha, se = -fit['coef'][1], fit['stderr'][1]
  return {'a': float(np.exp(fit['coef'][0])), 'alpha': float(alpha), 'alpha_stderr': float(se),
          'alpha_ci95': [float(alpha - 1.96 * se), float(alpha + 1.96 * se)],
          'r2_log': fit['r2'], 'points': fit['n']}


def fit_two_variable(n_params, n_data, loss) -> dict:
  """loss = a * N^-alpha * D^-beta over a grid of model sizes N and data sizes D."""
  n_params, n_data, loss = (np.asarray(v, float) for v in (n_params, n_data, loss))
  fit = _least_squares(np.stack([np.ones_like(loss), np.log(n_params), np.log(n_data)], 1),
                       np.log(loss))
  (c, a_n, a_d), (_, se_n, se_d) = fit['coef'], fit['stderr']
  return {'a': float(np.exp(c)), 'alpha': float(-a_n), 'alpha_stderr': float(se_n),
          'beta': float(-a_d), 'beta_stderr': float(se_d), 'r2_log': fit['r2'],
          'points': fit['n']}


def predict(fit: dict, x) -> np.ndarray:
  return fit['a'] * np.asarray(x, float) ** -fit['alpha']
