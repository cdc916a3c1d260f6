"""SiT transport: paths, conversions and samplers on a Gaussian toy with a known score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.diffusion import transport as transport_lib

# The toy data: x1 ~ N(MU, S^2) independently per dimension; x0 ~ N(0, 1) the noise.
MU = np.array([0.5, -1.0])
S = np.array([0.3, 0.6])
NUM_SAMPLES = 4000


def coefficients(path, t):
  """(alpha, alpha', sigma, sigma') written out from SiT's ICPlan / GVPCPlan."""
  if path == 'linear':
    return t, np.ones_like(t), 1 - t, -np.ones_like(t)
  return (np.sin(np.pi * t / 2), np.pi / 2 * np.cos(np.pi * t / 2),
          np.cos(np.pi * t / 2), -np.pi / 2 * np.sin(np.pi * t / 2))


def exact(path, x, t):
  """The toy's E[x0 | x_t] (noise), velocity E[u_t | x_t] and score at x [B, 2], t [B]."""
  alpha, d_alpha, sigma, d_sigma = (c[:, None] for c in coefficients(path, t))
  var = alpha ** 2 * S ** 2 + sigma ** 2
  noise = sigma * (x - alpha * MU) / var
  data = MU + alpha * S ** 2 * (x - alpha * MU) / var
  return {'noise': noise, 'velocity': d_alpha * data + d_sigma * noise,
          'score': -(x - alpha * MU) / var}


def exact_model_fn(path, prediction):
  """The Bayes-optimal model of the toy, as a jax function of (x, t)."""
  def model_fn(x, t):
    return jax.pure_callback(
        lambda x, t: exact(path, np.asarray(x, np.float64), np.asarray(t, np.float64))[
            prediction].astype(np.float32),
        jax.ShapeDtypeStruct(x.shape, jnp.float32), x, t)
  return model_fn


def assert_matches_toy(samples, rtol=0.06):
  samples = np.asarray(samples)
  np.testing.assert_allclose(samples.mean(0), MU, atol=5 * S.max() / np.sqrt(NUM_SAMPLES))
  np.testing.assert_allclose(samples.std(0), S, rtol=rtol)


def test_create_transport_uses_sit_epsilons():
  # SiT's create_transport: velocity models train and sample on all of [0, 1]; noise and
  # score models on the linear and GVP paths take 1e-3 for both (1e-5 is the VP path's).
  assert transport_lib.create_transport() == transport_lib.Transport('linear', 'velocity', 0, 0)
  for path in transport_lib.PATHS:
    for prediction in ('noise', 'score'):
      tr = transport_lib.create_transport(path, prediction)
      assert (tr.train_eps, tr.sample_eps) == (1e-3, 1e-3)
  with pytest.raises(ValueError):
    transport_lib.create_transport('vp')
  with pytest.raises(ValueError):
    transport_lib.create_transport(prediction='x0')


@pytest.mark.parametrize('path', transport_lib.PATHS)
def test_interpolate_runs_from_noise_to_data(path):
  tr = transport_lib.Transport(path)
  x0, x1 = jnp.ones((3, 2)), jnp.full((3, 2), 5.0)
  x_t, _ = tr.interpolate(jnp.array([0.0, 0.5, 1.0]), x0, x1)
  np.testing.assert_allclose(x_t[0], x0[0], atol=1e-6)
  np.testing.assert_allclose(x_t[2], x1[2], atol=1e-6)
  # u_t is d x_t / dt.
  t, h = jnp.array([0.2, 0.5, 0.8]), 1e-3
  _, u_t = tr.interpolate(t, x0, x1)
  x_after, x_before = tr.interpolate(t + h, x0, x1)[0], tr.interpolate(t - h, x0, x1)[0]
  np.testing.assert_allclose(u_t, (x_after - x_before) / (2 * h), rtol=1e-3)


@pytest.mark.parametrize('path', transport_lib.PATHS)
def test_conversions_round_trip(path):
  tr = transport_lib.Transport(path)
  key_x, key_v = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(key_x, (64, 2))
  v = jax.random.normal(key_v, (64, 2))
  t = jnp.linspace(0.02, 0.98, 64)
  noise = tr.noise_from_velocity(v, x, t)
  np.testing.assert_allclose(tr.velocity_from_noise(noise, x, t), v, rtol=1e-4, atol=1e-4)
  score = tr.score_from_noise(noise, x, t)
  np.testing.assert_allclose(tr.noise_from_score(score, x, t), noise, rtol=1e-5, atol=1e-6)
  for prediction, out in (('velocity', v), ('noise', noise), ('score', score)):
    model = transport_lib.Transport(path, prediction)
    np.testing.assert_allclose(model.to_velocity(out, x, t), v, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.to_score(out, x, t), score, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('path', transport_lib.PATHS)
def test_conversions_agree_with_the_toy(path):
  tr = transport_lib.Transport(path)
  x = np.random.default_rng(0).normal(size=(50, 2))
  t = np.linspace(0.01, 0.99, 50)
  want = exact(path, x, t)
  np.testing.assert_allclose(tr.velocity_from_noise(want['noise'], x, t), want['velocity'],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tr.score_from_noise(want['noise'], x, t), want['score'],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('path', transport_lib.PATHS)
@pytest.mark.parametrize('prediction', transport_lib.PREDICTIONS)
def test_the_exact_model_minimises_the_loss(path, prediction):
  """Shifting the Bayes-optimal prediction by c adds c^2 (times sigma_t^2 for the score)."""
  tr = transport_lib.create_transport(path, prediction)
  model_fn = exact_model_fn(path, prediction)
  x1 = jnp.asarray(MU + S * np.random.default_rng(1).normal(size=(20000, 2)), jnp.float32)
  key, c = jax.random.PRNGKey(2), 0.5

  @jax.jit
  def mean_losses(x1):
    base = tr.training_losses(model_fn, x1, key)
    shifted = tr.training_losses(lambda x, t: model_fn(x, t) + c, x1, key)
    return jnp.mean(base['loss']), jnp.mean(shifted['loss']), base['t']

  base, shifted, t = mean_losses(x1)
  assert tr.train_eps <= float(jnp.min(t)) and float(jnp.max(t)) <= 1 - tr.train_eps
  weight = {'linear': 1 / 3, 'gvp': 1 / 2}[path] if prediction == 'score' else 1.0
  np.testing.assert_allclose(shifted - base, c ** 2 * weight, rtol=0.1)


@pytest.mark.parametrize('path,prediction,method,num_steps', [
    ('linear', 'velocity', 'euler', 250),
    ('gvp', 'velocity', 'euler', 250),
    ('linear', 'velocity', 'heun', 50),
    ('gvp', 'noise', 'heun', 50),
    ('linear', 'score', 'euler', 250),
])
def test_ode_samples_the_toy(path, prediction, method, num_steps):
  tr = transport_lib.create_transport(path, prediction)
  x_init = jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, 2))
  sample = jax.jit(tr.ode_sample, static_argnums=(0, 2, 3))
  assert_matches_toy(sample(exact_model_fn(path, prediction), x_init, num_steps, method))


def test_heun_is_more_accurate_than_euler():
  tr = transport_lib.create_transport()
  model_fn = exact_model_fn('linear', 'velocity')
  x_init = jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, 2))
  # The toy's ODE is linear: 1000 Heun steps are the exact flow to float precision.
  reference = np.asarray(tr.ode_sample(model_fn, x_init, 1000, 'heun'))
  error = lambda method: np.abs(np.asarray(tr.ode_sample(model_fn, x_init, 20, method))
                                - reference).max()
  assert error('heun') < error('euler') / 10


@pytest.mark.parametrize('path,prediction', [('linear', 'velocity'), ('gvp', 'velocity'),
                                             ('linear', 'noise')])
def test_sde_samples_the_toy(path, prediction):
  # With SiT's defaults (250 points, last step 0.04) the toy's std comes out 4-6% short:
  # the noiseless last step from t = 0.96 leaves x at about 0.96 x1 on such narrow data.
  # It converges as the grid refines and the last step shrinks.
  tr = transport_lib.create_transport(path, prediction)
  x_init = jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, 2))
  sample = jax.jit(tr.sde_sample, static_argnums=(0, 2, 5))
  assert_matches_toy(sample(exact_model_fn(path, prediction), x_init, 500,
                            jax.random.PRNGKey(1), 1.0, 0.01))


def test_sde_is_random_and_keyed():
  tr = transport_lib.create_transport()
  model_fn = exact_model_fn('linear', 'velocity')
  x_init = jnp.zeros((4, 2))
  a = tr.sde_sample(model_fn, x_init, 20, jax.random.PRNGKey(0))
  b = tr.sde_sample(model_fn, x_init, 20, jax.random.PRNGKey(0))
  c = tr.sde_sample(model_fn, x_init, 20, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
