"""Subset geometry against a known mixture: POT's exact OT, a NumPy MMD, SciPy densities and
hand-built cases."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from scipy import special
from scipy import stats
from scipy.spatial import distance

from gadc_jax.evaluation import geometry


def _mixture(seed, k=3, d=6):
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.ones(k))
  return geometry.GaussianMixture(means=jnp.asarray(rng.normal(scale=3.0, size=(k, d))),
                                  scales=jnp.asarray(rng.uniform(0.5, 2.0, k)),
                                  weights=jnp.asarray(weights))


@pytest.mark.parametrize('seed,m,n', [(0, 1, 40), (1, 7, 60), (2, 12, 48)])
def test_w2_is_exact_against_pot(seed, m, n):
  rng = np.random.default_rng(seed)
  # Far from the origin: the distances must not cancel.
  subset = rng.normal(size=(m, 5)) + 100.0
  ref = geometry.reference(rng.normal(scale=2.0, size=(n, 5)) + 100.0)
  points = np.asarray(ref.points, np.float64)
  expected = np.sqrt(ot.emd2(np.full(m, 1 / m), np.full(n, 1 / n),
                             distance.cdist(subset, points, 'sqeuclidean')))
  np.testing.assert_allclose(geometry.w2(subset, ref), expected, rtol=1e-6)


def _numpy_mmd(subset, points):
  """MMD by explicit kernel sums, bandwidth the median over the reference's pairs i < j."""
  x, y = np.asarray(subset, np.float64), np.asarray(points, np.float64)
  n = len(y)
  h = np.median([np.sum((y[i] - y[j]) ** 2) for i in range(n) for j in range(i + 1, n)])

  def mean_kernel(a, b):
    return np.mean([np.exp(-np.sum((u - v) ** 2) / h) for u in a for v in b])

  return np.sqrt(mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


@pytest.mark.parametrize('seed,m,n', [(0, 1, 30), (1, 9, 41)])
def test_mmd_against_numpy(seed, m, n):
  rng = np.random.default_rng(seed)
  points = rng.normal(size=(n, 4)).astype(np.float32)
  subset = rng.normal(loc=0.5, size=(m, 4)).astype(np.float32)
  got = geometry.mmd(subset, geometry.reference(points))
  np.testing.assert_allclose(got, _numpy_mmd(subset, points), rtol=1e-4)


def test_mmd_of_the_reference_itself_is_zero():
  points = np.random.default_rng(3).normal(size=(25, 3)).astype(np.float32)
  assert geometry.mmd(points, geometry.reference(points)) < 1e-3


def test_log_density_against_scipy():
  mixture = _mixture(4)
  points = np.random.default_rng(5).normal(scale=3.0, size=(20, 6))
  per_mode = np.stack([
      stats.multivariate_normal(np.asarray(mu), float(s) ** 2 * np.eye(6)).logpdf(points)
      for mu, s in zip(mixture.means, mixture.scales)], axis=1)
  expected = special.logsumexp(per_mode + np.log(np.asarray(mixture.weights)), axis=1)
  got = geometry.log_density(mixture, jnp.asarray(points, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_sample_follows_the_weights_and_scales():
  mixture = geometry.GaussianMixture(
      means=jnp.array([[0.0, 0.0], [50.0, 0.0]]), scales=jnp.array([1.0, 3.0]),
      weights=jnp.array([0.8, 0.2]))
  points, mode = geometry.sample(jax.random.key(0), mixture, 20000)
  points, mode = np.asarray(points), np.asarray(mode)
  assert abs(np.mean(mode == 1) - 0.2) < 0.015
  # Every point lies near its own mode's centre, with that mode's spread.
  np.testing.assert_allclose(points[mode == 0].std(axis=0), [1.0, 1.0], rtol=0.05)
  np.testing.assert_allclose(points[mode == 1].mean(axis=0), [50.0, 0.0], atol=0.2)
  np.testing.assert_allclose(points[mode == 1].std(axis=0), [3.0, 3.0], rtol=0.05)


def test_mode_coverage_and_outliers_on_a_constructed_subset():
  mixture = geometry.GaussianMixture(means=jnp.zeros((4, 2)), scales=jnp.ones(4),
                                     weights=jnp.array([0.5, 0.3, 0.15, 0.05]))
  modes = np.array([0, 0, 3, geometry.OUTLIER, geometry.OUTLIER])
  assert geometry.mode_coverage(modes, mixture.weights) == pytest.approx((0.5, 0.55))
  ref = geometry.reference(np.random.default_rng(0).normal(size=(10, 2)))
  out = geometry.subset_geometry(np.zeros((5, 2)), modes, mixture, ref)
  assert out['outliers'] == 2 and out['modes_hit'] == pytest.approx(0.5)
  assert geometry.mode_coverage([geometry.OUTLIER], mixture.weights) == (0.0, 0.0)
  with pytest.raises(ValueError, match='mode labels'):
    geometry.mode_coverage([4], mixture.weights)
