"""Geometry diagnostics against POT's exact OT, an independent MMD and hand-built cases."""

import numpy as np
import ot
import pytest
from scipy.spatial import distance

from gadc_jax import defaults
from gadc_jax.transport import diagnostics

CFG = defaults.diagnostics()


def _class(seed, n=40, d=5, scale=3.0):
  return np.random.default_rng(seed).normal(scale=scale, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize('seed,n,m', [(0, 30, 1), (1, 40, 7), (2, 53, 10), (3, 25, 25)])
def test_w2_is_exact_against_pot(seed, n, m):
  x = _class(seed, n)
  selected = np.random.default_rng(seed).choice(n, m, replace=False)
  cost = distance.cdist(x[selected], x, 'sqeuclidean')
  expected = np.sqrt(ot.emd2(np.full(m, 1 / m), np.full(n, 1 / n), cost))
  got = diagnostics.w2(diagnostics.class_sq_dists(x)[selected])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_class_sq_dists_is_exact_at_large_offsets():
  x = _class(4) + 1e3  # Far from the origin: the uncentred matmul form would cancel.
  np.testing.assert_allclose(diagnostics.class_sq_dists(x),
                             distance.cdist(x.astype(np.float64), x, 'sqeuclidean'),
                             rtol=1e-9, atol=1e-6)


def _mmd_reference(x, selected):
  """MMD by explicit kernel sums over pairs, bandwidth the median over i < j."""
  x = x.astype(np.float64)
  n = len(x)
  h = np.median([np.sum((x[i] - x[j]) ** 2) for i in range(n) for j in range(i + 1, n)])

  def mean_kernel(a, b):
    return np.mean([np.exp(-np.sum((p - q) ** 2) / h) for p in a for q in b])

  s = x[selected]
  return np.sqrt(mean_kernel(s, s) + mean_kernel(x, x) - 2 * mean_kernel(s, x))


@pytest.mark.parametrize('m', [1, 4, 12])
def test_mmd_against_explicit_sums(m):
  x = _class(5, n=30)
  selected = np.arange(m) * 2
  np.testing.assert_allclose(diagnostics.mmd(diagnostics.class_sq_dists(x), selected),
                             _mmd_reference(x, selected), rtol=1e-7)


def test_coverage_on_a_line():
  # Two clusters of 6 unit-spaced points, far apart; integer coordinates keep the distances
  # exact, so "within the radius" (<=) is tested at its boundary too. With k = 2 the radius
  # is 2 at the ends of a cluster and 1 inside it.
  x = np.concatenate([np.arange(6), 100 + np.arange(6)])[:, None].astype(np.float64)
  sq = diagnostics.class_sq_dists(x)
  # Point 2 covers 0 (at its radius 2), 1, 2, 3 but not 4 (radius 1) or 5 (distance 3).
  assert diagnostics.coverage(sq, np.array([2]), k=2) == pytest.approx(4 / 12)
  assert diagnostics.coverage(sq, np.array([2, 8]), k=2) == pytest.approx(8 / 12)
  assert diagnostics.coverage(sq, np.array([0, 3, 6, 9]), k=2) == 1.0
  # With k = 5 every radius reaches at least 3: point 2 covers its whole cluster.
  assert diagnostics.coverage(sq, np.array([2]), k=5) == pytest.approx(6 / 12)


def test_moment_gaps_by_hand():
  x = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 6.0]])
  mean_gap, var_gap = diagnostics.moment_gaps(x, np.array([0, 1]))
  # mu_S = (1, 0), mu_c = (2, 2); var_S = (2, 0), var_c = (4, 12).
  assert mean_gap == pytest.approx(np.sqrt(5.0))
  assert var_gap == pytest.approx(2.0 + 12.0)
  assert diagnostics.moment_gaps(x, np.array([2]))[1] == pytest.approx(16.0)  # var_S = 0.


def test_whole_class_has_no_gaps():
  x = _class(6)
  out = diagnostics.diagnostics(x, np.arange(len(x)), np.linspace(0, 1, len(x)), CFG)
  for key in ('w2', 'mmd', 'mean_gap', 'var_gap'):
    assert out[key] == pytest.approx(0.0, abs=1e-5), key
  assert out['coverage'] == 1.0
  assert out['ce'] == pytest.approx(0.5)


def _pot_sinkhorn(sq, selected, kappa, delta, epsilon):
  """The spec's one-sided partial OT by POT: log-domain Sinkhorn on the dummy-row problem,
  the transport cost of the real rows."""
  m, n = len(selected), len(sq)
  cost = np.vstack([sq[selected], np.full((1, n), delta)])
  plan = ot.sinkhorn(np.r_[np.full(m, 1 / m), kappa - 1], np.full(n, kappa / n), cost,
                     reg=epsilon, method='sinkhorn_log', stopThr=1e-12, numItermax=100000)
  return (plan[:m] * sq[selected]).sum()


@pytest.mark.parametrize('epsilon_rel', [None, 0.2])
def test_both_pot_terms_against_pot(epsilon_rel):
  x = _class(7, n=45)
  selected = np.array([3, 9, 20, 31])
  sq = diagnostics.class_sq_dists(x)
  median = np.sort(sq.ravel())[(sq.size - 1) // 2]
  objective_cfg = defaults.gadc()  # J's settings: epsilon 20 (absolute), kappa 1.05.
  objective_cfg.epsilon_rel = epsilon_rel
  objective_cfg.kappa, objective_cfg.delta_factor = 1.2, 0.1
  out = diagnostics.diagnostics(x, selected, None, CFG, objective_cfg=objective_cfg)
  relative = _pot_sinkhorn(sq, selected, CFG.pot_kappa, CFG.pot_delta_factor * median,
                           CFG.pot_epsilon_rel * sq.mean())
  objective_eps = 20.0 if epsilon_rel is None else epsilon_rel * sq.mean()
  objective = _pot_sinkhorn(sq, selected, 1.2, 0.1 * median, objective_eps)
  np.testing.assert_allclose(out['pot_relative_eps'], relative, rtol=1e-4)
  np.testing.assert_allclose(out['pot_objective_eps'], objective, rtol=1e-4)
  assert abs(relative - objective) > 1e-2 * relative  # the two terms are not the same.
  assert 'pot_objective_eps' not in diagnostics.diagnostics(x, selected, None, CFG)


def test_diagnostics_of_one_point_and_average():
  x = _class(8)
  one = diagnostics.diagnostics(x, np.array([5]), None, CFG)
  assert set(one) == {'w2', 'pot_relative_eps', 'mmd', 'mean_gap', 'var_gap', 'coverage'}
  assert all(np.isfinite(v) for v in one.values())
  # One point at x_5 transports everything there: W2^2 = mean_j ||x_5 - x_j||^2.
  sq = diagnostics.class_sq_dists(x)
  assert one['w2'] == pytest.approx(np.sqrt(sq[5].mean()))
  other = diagnostics.diagnostics(x, np.array([1, 2]), None, CFG)
  mean = diagnostics.average([one, other])
  assert mean['mmd'] == pytest.approx((one['mmd'] + other['mmd']) / 2)
  with pytest.raises(ValueError, match='different keys'):
    diagnostics.average([one, dict(other, ce=1.0)])


def test_bad_indices_are_rejected():
  with pytest.raises(ValueError, match='distinct indices'):
    diagnostics.diagnostics(_class(9), np.array([1, 1]), None, CFG)
