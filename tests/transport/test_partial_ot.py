"""Partial OT against exact solvers (POT) and an independent NumPy log-domain Sinkhorn."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from scipy.special import logsumexp

from gadc_jax import distances
from gadc_jax.transport import partial_ot


def _points(seed, n, dim=3, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal((n, dim))).astype(np.float32)


def _sq_dists(x, y):
  return ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)


def numpy_partial_sinkhorn(cost, delta, eps, kappa, iters=20000, tol=1e-12):
  """Reference: log-domain Sinkhorn in float64 on the dummy-row problem; returns (value, plan)."""
  m, n = cost.shape
  big = np.vstack([cost, np.full((1, n), delta)])
  log_a = np.log(np.r_[np.full(m, 1.0 / m), kappa - 1.0])
  log_b = np.log(np.full(n, kappa / n))
  f, g = np.zeros(m + 1), np.zeros(n)
  for _ in range(iters):
    g = eps * log_b - eps * logsumexp((f[:, None] - big) / eps, axis=0)
    f = eps * log_a - eps * logsumexp((g[None, :] - big) / eps, axis=1)
    plan = np.exp((f[:, None] + g[None, :] - big) / eps)
    if np.abs(plan.sum(0) - kappa / n).sum() < tol:
      break
  return (plan[:m] * cost).sum(), plan[:m]


def _solve(cost, **kw):
  kw.setdefault('threshold', 1e-6)
  kw.setdefault('max_iterations', 20000)
  return jax.jit(lambda c: partial_ot.solve(c, **kw))(jnp.asarray(cost, jnp.float32))


def test_matches_exact_partial_wasserstein_as_epsilon_shrinks():
  x = _points(0, 12)
  rows = [0, 4, 7]
  cost = _sq_dists(x[rows], x)
  kappa, delta = 1.2, 0.5
  m, n = cost.shape
  # Exact: the same augmented balanced problem (emd), and POT's partial solver with the
  # equivalent constraints: rows ship all their mass 1, columns take at most kappa/n.
  a = np.r_[np.full(m, 1.0 / m), kappa - 1.0]
  b = np.full(n, kappa / n)
  emd = ot.emd(a, b, np.vstack([cost, np.full((1, n), delta)]))
  exact = (emd[:m] * cost).sum()
  partial = ot.partial.partial_wasserstein(np.full(m, 1.0 / m), b, cost, m=1.0)
  np.testing.assert_allclose((partial * cost).sum(), exact, rtol=1e-9)
  # The dummy always ships kappa - 1 at cost delta, a constant, so for any delta the
  # unregularised augmented problem is the partial one; delta only matters through entropy.
  gaps = [abs(float(_solve(cost, delta=delta, epsilon=eps, kappa=kappa).value) - exact)
          for eps in (1.0, 0.1, 0.01)]
  assert gaps[0] > gaps[1] > gaps[2]
  assert gaps[2] < 1e-4 * exact


def test_matches_numpy_sinkhorn_at_moderate_epsilon():
  x = _points(1, 30, dim=4)
  cost = _sq_dists(x[[2, 3, 11, 17, 25]], x)
  value, plan = numpy_partial_sinkhorn(cost, delta=0.8, eps=0.7, kappa=1.05)
  out = _solve(cost, delta=0.8, epsilon=0.7, kappa=1.05)
  assert bool(out.converged)
  np.testing.assert_allclose(float(out.value), value, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.plan), plan, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.plan).sum(1), 1 / 5, rtol=1e-4)


def test_solve_stopped_at_the_cap_is_not_converged():
  x = _points(1, 30, dim=4)
  cost = _sq_dists(x[[2, 3, 11, 17, 25]], x)
  capped = _solve(cost, delta=0.8, epsilon=0.7, kappa=1.05, max_iterations=10)
  assert not bool(capped.converged) and int(capped.n_iters) == 10
  assert np.isfinite(float(capped.value))
  # The same problem meets the threshold well before the default cap.
  out = _solve(cost, delta=0.8, epsilon=0.7, kappa=1.05)
  assert bool(out.converged) and int(out.n_iters) < 20000


def test_kappa_one_is_balanced_ot():
  x = _points(2, 10)
  cost = _sq_dists(x[[1, 5]], x)
  out = _solve(cost, delta=1.0, epsilon=0.5, kappa=1.0)
  reference = ot.sinkhorn(np.full(2, 0.5), np.full(10, 0.1), cost, reg=0.5,
                          method='sinkhorn_log', stopThr=1e-12, numItermax=100000)
  np.testing.assert_allclose(np.asarray(out.plan), reference, atol=1e-6)


def test_padding_columns_and_inactive_rows_change_nothing():
  x = _points(3, 20)
  cost = _sq_dists(x[[0, 9, 13]], x)
  base = _solve(cost, delta=0.4, epsilon=0.3, kappa=1.1)
  padded_cost = np.concatenate([cost, np.full((3, 5), 7.0)], axis=1)
  padded_cost = np.concatenate([padded_cost, np.full((2, 25), 3.0)], axis=0)
  col_mask = jnp.arange(25) < 20
  row_mask = jnp.arange(5) < 3
  out = _solve(padded_cost, delta=0.4, epsilon=0.3, kappa=1.1, col_mask=col_mask,
               row_mask=row_mask)
  np.testing.assert_allclose(float(out.value), float(base.value), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.plan)[:3, :20], np.asarray(base.plan), atol=1e-7)
  assert np.all(np.asarray(out.plan)[3:] == 0) and np.all(np.asarray(out.plan)[:, 20:] == 0)


def test_vmap_equals_loop_and_warm_start_agrees():
  x = _points(4, 16)
  costs = np.stack([_sq_dists(x[[i, i + 3]], x) for i in range(4)]).astype(np.float32)
  fn = lambda c: partial_ot.solve(c, delta=0.5, epsilon=0.4, kappa=1.05)
  batched = jax.jit(jax.vmap(fn))(costs)
  for i in range(4):
    single = jax.jit(fn)(costs[i])
    np.testing.assert_allclose(float(batched.value[i]), float(single.value), rtol=1e-5)
  warm = jax.jit(lambda c, f, g: partial_ot.solve(c, delta=0.5, epsilon=0.4, kappa=1.05,
                                                  init=(f, g)))(costs[0], batched.f[0],
                                                                batched.g[0])
  np.testing.assert_allclose(float(warm.value), float(batched.value[0]), rtol=1e-5)


@pytest.mark.parametrize('norm', [1e-3, 1e-1, 1e1, 1e3])
def test_finite_for_feature_norms_at_absolute_epsilon_20(norm):
  rng = np.random.default_rng(5)
  x = rng.standard_normal((200, 64)).astype(np.float32)
  x *= norm / np.linalg.norm(x, axis=1, keepdims=True)
  full = distances.pairwise_sq_dists(jnp.asarray(x), jnp.asarray(x))
  delta = partial_ot.class_delta(full, None, 0.05)
  out = jax.jit(lambda c, d: partial_ot.solve(c, delta=d, epsilon=20.0, kappa=1.05))(
      full[:10], delta)
  for leaf in (out.value, out.plan, out.f, out.g):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # The real rows always ship (close to) all of their mass, converged or not.
  np.testing.assert_allclose(np.asarray(out.plan).sum(), 1.0, rtol=1e-3)
  assert 0.0 <= float(out.value) <= float(jnp.max(full[:10]))


def test_relative_epsilon_is_scale_free():
  x = _points(6, 60, dim=8)
  values = []
  for scale in (1e-3, 1.0, 1e3):
    full = distances.pairwise_sq_dists(jnp.asarray(x * scale), jnp.asarray(x * scale))
    eps = partial_ot.resolve_epsilon(full, None, 20.0, 0.05)
    delta = partial_ot.class_delta(full, None, 0.05)
    out = partial_ot.solve(full[:6], delta=delta, epsilon=eps, kappa=1.05)
    assert bool(out.converged)
    values.append(float(out.value) / scale ** 2)
  np.testing.assert_allclose(values, values[1], rtol=1e-3)


def test_class_delta_and_epsilon_over_real_entries():
  x = _points(7, 9)
  full = _sq_dists(x, x)
  padded = np.zeros((12, 12), np.float32)
  padded[:9, :9] = full
  mask = jnp.arange(12) < 9
  delta = float(partial_ot.class_delta(jnp.asarray(padded), mask, 0.05))
  lower_median = np.sort(full.ravel())[(full.size - 1) // 2]
  np.testing.assert_allclose(delta, 0.05 * lower_median, rtol=1e-5)
  eps = float(partial_ot.resolve_epsilon(jnp.asarray(padded), mask, 20.0, 0.1))
  np.testing.assert_allclose(eps, 0.1 * full.mean(), rtol=1e-5)
  assert float(partial_ot.resolve_epsilon(jnp.asarray(padded), mask, 20.0, None)) == 20.0
