"""Classifier-free guidance wrapper: the scale's end points and the channels it guides."""

import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.diffusion import guidance

NULL = 10


def learned_sigma_apply(x, t, labels):
  """A DiT-like toy: 2C output channels (eps, variance value) depending on the label."""
  y = labels.astype(jnp.float32)[:, None, None, None]
  tt = t.astype(jnp.float32)[:, None, None, None]
  return jnp.concatenate([x * (1.0 + y) + tt, jnp.tanh(x - y)], axis=-1)


@pytest.fixture
def case():
  """(x [3, 2, 2, 4], t, labels, conditional output, unconditional output)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 4)), jnp.float32)
  t, labels = jnp.array([5, 100, 999]), jnp.array([0, 3, 7])
  return (x, t, labels, learned_sigma_apply(x, t, labels),
          learned_sigma_apply(x, t, jnp.full_like(labels, NULL)))


@pytest.mark.parametrize('scale,num_guided', [(0.0, None), (1.0, None), (1.5, None),
                                              (4.0, 3)])
def test_guides_the_eps_channels(case, scale, num_guided):
  x, t, labels, cond, uncond = case
  guided = guidance.cfg_model_fn(learned_sigma_apply, scale, NULL, num_guided)(x, t, labels)
  k = 4 if num_guided is None else num_guided
  np.testing.assert_allclose(guided[..., :k], uncond[..., :k]
                             + scale * (cond[..., :k] - uncond[..., :k]), rtol=1e-5)
  # The rest (the variance channels, and eps channel 3 in DiT's release) is the cond half's.
  np.testing.assert_allclose(guided[..., k:], cond[..., k:], rtol=1e-6)


def test_scale_one_is_conditional_and_zero_unconditional(case):
  x, t, labels, cond, uncond = case
  np.testing.assert_allclose(
      guidance.cfg_model_fn(learned_sigma_apply, 1.0, NULL)(x, t, labels), cond, rtol=1e-6)
  guided = guidance.cfg_model_fn(learned_sigma_apply, 0.0, NULL)(x, t, labels)
  np.testing.assert_allclose(guided[..., :4], uncond[..., :4], rtol=1e-6)


def test_velocity_model_in_one_doubled_call(case):
  x, t, labels, _, _ = case
  t = t / 1000.0
  calls = []

  def velocity_apply(x, t, labels):
    calls.append(x.shape[0])
    return x * labels.astype(jnp.float32)[:, None, None, None] - t[:, None, None, None]

  guided = guidance.cfg_model_fn(velocity_apply, 2.0, NULL)(x, t, labels)
  assert calls == [6] and guided.shape == x.shape
  cond, uncond = velocity_apply(x, t, labels), velocity_apply(x, t, jnp.full_like(labels, NULL))
  np.testing.assert_allclose(guided, uncond + 2.0 * (cond - uncond), rtol=1e-5, atol=1e-6)
