"""The OT guidance cost against POT and its gradient against finite differences."""

import jax
from jax import enable_x64
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from gadc_jax.distill import ot_guidance


def _points(seed, n, dim):
  return np.random.default_rng(seed).standard_normal((n, dim))


def _pot_cost(x, y, epsilon):
  """POT's <P, C> of the entropic plan, l1 ground cost, uniform weights (float64)."""
  cost = ot.dist(x, y, metric='cityblock')
  a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
  return float(ot.sinkhorn2(a, b, cost, epsilon, method='sinkhorn_log', numItermax=100000,
                            stopThr=1e-13))


@pytest.mark.parametrize('epsilon_rel', [0.05, 0.5])
def test_value_matches_pot_sinkhorn2(epsilon_rel):
  x, y = _points(0, 7, 5), _points(1, 11, 5)
  cost = ot.dist(x, y, metric='cityblock')
  epsilon = epsilon_rel * cost.mean()
  with enable_x64():
    value, _ = ot_guidance.ot_cost(jnp.asarray(x), jnp.asarray(y), jnp.asarray(epsilon),
                                   threshold=1e-12, max_iterations=100000)
    assert float(ot_guidance.relative_epsilon(jnp.asarray(x), jnp.asarray(y), epsilon_rel)) \
        == pytest.approx(epsilon, rel=1e-12)
  assert float(value) == pytest.approx(_pot_cost(x, y, epsilon), rel=1e-7)
  # Not the unregularised cost: the entropic plan is blurred, so its cost is higher.
  exact = ot.emd2(np.full(7, 1 / 7), np.full(11, 1 / 11), cost)
  assert float(value) > exact + 1e-6


def test_massless_rows_are_left_out():
  x, y = _points(2, 6, 4), _points(3, 9, 4)
  mask = np.array([True, False, True, True, False, True])
  epsilon = 0.2 * ot.dist(x[mask], y, metric='cityblock').mean()
  with enable_x64():
    padded, _ = ot_guidance.ot_cost(jnp.asarray(x), jnp.asarray(y), jnp.asarray(epsilon),
                                    jnp.asarray(mask), threshold=1e-12, max_iterations=100000)
    eps_rel = ot_guidance.relative_epsilon(jnp.asarray(x), jnp.asarray(y), 0.2,
                                           jnp.asarray(mask))
  assert float(padded) == pytest.approx(_pot_cost(x[mask], y, epsilon), rel=1e-7)
  assert float(eps_rel) == pytest.approx(epsilon, rel=1e-12)


@pytest.mark.slow  # the unrolled Sinkhorn's gradient compiles slowly on the 2-core CPU.
def test_current_row_gradient_matches_finite_differences():
  earlier, y = _points(4, 5, 6), _points(5, 8, 6)
  current = _points(6, 1, 6)[0]
  mask = np.array([True, True, False, True, True])
  epsilon_rel = 0.3
  kwargs = dict(threshold=1e-13, max_iterations=3000)
  with enable_x64():
    value, grad, _ = ot_guidance.current_row_gradient(
        jnp.asarray(earlier), jnp.asarray(mask), jnp.asarray(current), jnp.asarray(y),
        epsilon_rel, **kwargs)
    # The same absolute epsilon for every shifted point: relative_epsilon is a constant.
    x = jnp.asarray(np.vstack([earlier, current]))
    full_mask = jnp.asarray(np.r_[mask, True])
    epsilon = ot_guidance.relative_epsilon(x, jnp.asarray(y), epsilon_rel, full_mask)

    solve = jax.jit(lambda points: ot_guidance.ot_cost(points, jnp.asarray(y), epsilon,
                                                       full_mask, **kwargs)[0])

    def cost_at(row):
      return float(solve(jnp.asarray(np.vstack([earlier, row]))))

    h = 1e-6
    numeric = np.array([(cost_at(current + h * e) - cost_at(current - h * e)) / (2 * h)
                        for e in np.eye(6)])
    assert float(value) == pytest.approx(cost_at(current), rel=1e-10)
  np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-5, atol=1e-7)
  # The plan's own dependence on x matters: the envelope form <P*, dC/dx> alone differs.
  assert np.abs(numeric).max() > 1e-3
