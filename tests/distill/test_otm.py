"""OTM's loss against a NumPy port of SinKD's loss.py and against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.distill import otm


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _sinkd_loss(y_s, y_t):
  """SinKD's saliency_mse.forward (github 2018cx/SinKD, loss.py), ported to NumPy float64:
  T = 2, cost cdist(p=1), K = exp(-W / 0.1), 20 rounds of row / column normalisation,
  sum(P * W), weighted 0.0008 * 20 / 8."""
  p_s, p_t = _softmax(y_s / 2), _softmax(y_t / 2)
  w = np.abs(p_s[:, None, :] - p_t[None, :, :]).sum(-1)
  x = np.exp(-w / 0.1)
  for _ in range(20):
    x = x / x.sum(axis=1, keepdims=True)
    x = x / x.sum(axis=0, keepdims=True)
  return 0.0008 * np.sum(x * w) * 20 / 8


@pytest.mark.parametrize('batch,classes', [(8, 10), (5, 3)])
def test_sinkhorn_distance_matches_sinkd(batch, classes):
  rng = np.random.default_rng(batch)
  y_s, y_t = rng.normal(0, 3, (2, batch, classes))
  ours = otm.sinkhorn_distance(jax.nn.softmax(y_s / 2), jax.nn.softmax(y_t / 2), 0.1, 20)
  np.testing.assert_allclose(0.0008 * 20 / 8 * float(ours), _sinkd_loss(y_s, y_t), rtol=1e-5)


def test_plan_columns_sum_to_one_rows_near_one():
  rng = np.random.default_rng(0)
  p, q = _softmax(rng.normal(0, 2, (6, 4))), _softmax(rng.normal(0, 2, (6, 4)))
  plan = otm.sinkhorn_normalized(jnp.exp(-otm.l1_cost(p, q) / 0.5), 200)
  np.testing.assert_allclose(plan.sum(0), 1, atol=1e-5)
  np.testing.assert_allclose(plan.sum(1), 1, atol=1e-3)


def test_distance_is_zero_between_equal_one_hot_batches():
  one_hot = jnp.eye(4)
  assert float(otm.sinkhorn_distance(one_hot, one_hot)) == pytest.approx(0, abs=1e-6)


def test_otm_loss_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 1, (6, 5))
  hard = rng.integers(0, 5, 6)
  soft = _softmax(rng.normal(0, 2, (6, 5)))
  with jax.enable_x64(True):
    @jax.jit
    def loss(x):
      return otm.otm_loss(x, jnp.asarray(hard), jnp.asarray(soft), kappa1=0.7, kappa2=1.3,
                          beta2=0.5, epsilon=0.1, iterations=20)[0]
    x = jnp.asarray(logits, jnp.float64)
    grad = np.asarray(jax.grad(loss)(x))
    h = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
      step = np.zeros_like(logits)
      step[idx] = h
      numeric[idx] = (float(loss(x + step)) - float(loss(x - step))) / (2 * h)
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_otm_loss_terms():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 1, (4, 3)).astype(np.float32)
  hard = np.array([0, 2, 1, 1])
  soft = _softmax(rng.normal(0, 1, (4, 3)))
  loss, parts = otm.otm_loss(logits, hard, soft, kappa1=2.0, kappa2=3.0, beta2=0.0)
  log_p = np.log(_softmax(logits.astype(np.float64)))
  ce = -log_p[np.arange(4), hard].mean()
  mse = ((_softmax(logits.astype(np.float64)) - soft) ** 2).sum(1).mean()
  np.testing.assert_allclose(parts['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(parts['mse'], mse, rtol=1e-5)
  assert float(parts['sd']) == 0
  np.testing.assert_allclose(loss, 2 * ce + 3 * mse, rtol=1e-5)
