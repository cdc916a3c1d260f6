"""Gaussian diffusion against closed forms computed independently in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.diffusion import gaussian

T = 1000
# Ho et al.'s schedule written out, not taken from the module under test.
BETAS = np.linspace(1e-4, 0.02, T)
ABAR = np.cumprod(1.0 - BETAS)
ABAR_PREV = np.append(1.0, ABAR[:-1])

# The toy data: x0 ~ N(MU, S^2) independently per dimension.
MU = np.array([0.5, -1.0])
S = np.array([0.3, 0.6])
NUM_SAMPLES = 4000


@pytest.fixture(scope='module')
def diffusion():
  return gaussian.create_diffusion()


def bayes_posterior(x0, x_t, t):
  """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), for t >= 1: (mean, var)."""
  prior_var = 1.0 - ABAR_PREV[t]
  precision = 1.0 / prior_var + (1.0 - BETAS[t]) / BETAS[t]
  var = 1.0 / precision
  mean = var * (np.sqrt(ABAR_PREV[t]) * x0 / prior_var + np.sqrt(1.0 - BETAS[t]) * x_t / BETAS[t])
  return mean, var


def test_schedule_is_adm_linear(diffusion):
  np.testing.assert_allclose(diffusion.betas, BETAS, rtol=1e-5)
  np.testing.assert_allclose(diffusion.alphas_cumprod, ABAR, rtol=1e-5)
  assert diffusion.alphas_cumprod.dtype == jnp.float32
  np.testing.assert_allclose(gaussian.linear_betas(250)[[0, -1]], [4e-4, 0.08])


def test_q_sample_moments(diffusion):
  x0 = jnp.array([0.7, -0.3])
  q_sample = jax.jit(diffusion.q_sample)
  for t in (0, 100, 500, 999):
    noise = jax.random.normal(jax.random.PRNGKey(t), (20000, 2))
    x_t = q_sample(jnp.broadcast_to(x0, noise.shape), jnp.full((20000,), t), noise)
    np.testing.assert_allclose(np.mean(x_t, 0), np.sqrt(ABAR[t]) * x0, atol=0.03)
    np.testing.assert_allclose(np.var(x_t, 0), 1.0 - ABAR[t], rtol=0.05, atol=1e-6)


def test_posterior_is_bayes(diffusion):
  rng = np.random.default_rng(0)
  t = np.array([1, 2, 10, 300, 999])
  x0 = rng.normal(size=(5, 3))
  x_t = rng.normal(size=(5, 3))
  mean, var, log_var = diffusion.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(x_t),
                                                           jnp.asarray(t))
  want_mean, want_var = bayes_posterior(x0, x_t, t[:, None])
  np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, want_var, rtol=1e-4)
  np.testing.assert_allclose(log_var, np.log(want_var), rtol=1e-4)
  # At t = 0 the posterior is the point x_0; its log-variance is clipped to t = 1's.
  mean0, var0, log_var0 = diffusion.q_posterior_mean_variance(
      jnp.asarray(x0), jnp.asarray(x_t), jnp.zeros(5, jnp.int32))
  np.testing.assert_allclose(mean0, x0, atol=1e-6)
  np.testing.assert_allclose(var0, 0.0, atol=1e-12)
  np.testing.assert_allclose(log_var0[:, 0], np.log(bayes_posterior(0.0, 0.0, 1)[1]), rtol=1e-4)


def test_vb_terms_are_the_gaussian_kl(diffusion):
  rng = np.random.default_rng(1)
  t = np.array([1, 5, 250, 999])
  x0, x_t, eps = (rng.normal(size=(4, 2, 2, 3)) for _ in range(3))
  v = rng.uniform(-1, 1, size=(4, 2, 2, 3))
  got = jax.jit(diffusion.vb_terms_bpd)(jnp.asarray(np.concatenate([eps, v], -1), jnp.float32),
                               jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
  tb = t[:, None, None, None]
  true_mean, true_var = bayes_posterior(x0, x_t, tb)
  x0_hat = (x_t - np.sqrt(1.0 - ABAR[tb]) * eps) / np.sqrt(ABAR[tb])
  model_mean, _ = bayes_posterior(x0_hat, x_t, tb)
  frac = (v + 1) / 2
  model_var = np.exp(frac * np.log(BETAS[tb]) + (1 - frac) * np.log(true_var))
  kl = (0.5 * np.log(model_var / true_var)
        + (true_var + (true_mean - model_mean) ** 2) / (2 * model_var) - 0.5)
  np.testing.assert_allclose(got, kl.mean(axis=(1, 2, 3)) / np.log(2), rtol=1e-3)


def test_vb_at_t0_is_the_decoder_nll(diffusion):
  x0 = jnp.full((1, 4, 4, 1), 2 * 100 / 255 - 1)
  model_out = jnp.concatenate([jnp.zeros_like(x0), jnp.zeros_like(x0)], -1)
  t = jnp.zeros(1, jnp.int32)
  out = jax.jit(diffusion.p_mean_variance_from_output)(model_out, x0, t)
  nll = -jax.jit(gaussian.discretized_gaussian_log_likelihood)(x0, out['mean'],
                                                               0.5 * out['log_variance'])
  np.testing.assert_allclose(jax.jit(diffusion.vb_terms_bpd)(model_out, x0, x0, t),
                             [np.mean(nll) / np.log(2)], rtol=1e-6)


@pytest.mark.parametrize('mean,log_scale', [(0.0, np.log(0.01)), (0.3, np.log(0.2)),
                                            (-0.95, np.log(0.05)), (0.0, 0.0)])
def test_discretized_likelihood_sums_to_one(mean, log_scale):
  bins = jnp.linspace(-1.0, 1.0, 256)
  log_probs = gaussian.discretized_gaussian_log_likelihood(
      bins, jnp.full_like(bins, mean), jnp.full_like(bins, log_scale))
  assert np.all(np.asarray(log_probs) <= 0.0)
  np.testing.assert_allclose(np.sum(np.exp(log_probs)), 1.0, atol=1e-4)


def test_training_losses_freeze_the_mean_in_vb(diffusion):
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 2), minval=-1, maxval=1)
  t = jnp.arange(8) * 120
  key = jax.random.PRNGKey(1)

  def losses(params):
    model_fn = lambda x, t: jnp.concatenate([params[0] * x, jnp.tanh(params[1] * x)], -1)
    return diffusion.training_losses(model_fn, x0, t, key)

  params = jnp.array([0.5, 0.3])
  out = jax.jit(losses)(params)
  assert out['loss'].shape == out['mse'].shape == out['vb'].shape == (8,)
  np.testing.assert_allclose(out['loss'], out['mse'] + out['vb'], rtol=1e-6)
  grad_vb = jax.jit(jax.grad(lambda p: jnp.mean(losses(p)['vb'])))(params)
  assert grad_vb[0] == 0.0 and grad_vb[1] != 0.0


def adm_space_timesteps(num_timesteps, section_counts):
  """guided-diffusion respace.py's space_timesteps written out (sorted, not a set)."""
  if section_counts.startswith('ddim'):
    desired = int(section_counts[len('ddim'):])
    stride = next(i for i in range(1, num_timesteps)
                  if len(range(0, num_timesteps, i)) == desired)
    return list(range(0, num_timesteps, stride))
  counts = [int(x) for x in section_counts.split(',')]
  size_per, extra = num_timesteps // len(counts), num_timesteps % len(counts)
  start_idx, all_steps = 0, []
  for i, section_count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    cur_idx = 0.0
    for _ in range(section_count):
      all_steps.append(start_idx + round(cur_idx))
      cur_idx += frac_stride
    start_idx += size
  return sorted(set(all_steps))


def test_space_timesteps_equals_adm_for_every_count():
  for counts in [str(n) for n in range(1, T)] + ['10,20,30', '7,1,250,3', '3,500',
                                                 'ddim50', 'ddim25', 'ddim10']:
    assert gaussian.space_timesteps(T, counts) == adm_space_timesteps(T, counts), counts


def test_space_timesteps_as_adm():
  assert gaussian.space_timesteps(1000, 'ddim50') == list(range(0, 1000, 20))
  kept = gaussian.space_timesteps(1000, '250')
  assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
  assert gaussian.space_timesteps(300, [10, 15, 20]) == gaussian.space_timesteps(300, '10,15,20')
  assert gaussian.space_timesteps(10, '10') == list(range(10))
  with pytest.raises(ValueError):
    gaussian.space_timesteps(100, 'ddim33')


def test_respace_keeps_alphas_cumprod(diffusion):
  for counts in ('250', 'ddim50', [10, 20, 5]):
    spaced = gaussian.respace(diffusion, counts)
    kept = gaussian.space_timesteps(T, counts)
    assert spaced.timestep_map == tuple(kept)
    np.testing.assert_allclose(spaced.alphas_cumprod, ABAR[kept], rtol=1e-6)
    np.testing.assert_allclose(spaced.betas, 1 - ABAR[kept] / np.append(1, ABAR[kept][:-1]),
                               rtol=1e-5)
  twice = gaussian.respace(gaussian.respace(diffusion, '250'), '50')
  np.testing.assert_allclose(twice.alphas_cumprod, ABAR[list(twice.timestep_map)], rtol=1e-6)
  assert set(twice.timestep_map) <= set(gaussian.space_timesteps(T, '250'))


def test_respace_all_steps_is_identity(diffusion):
  same = gaussian.respace(diffusion, str(T))
  assert same.timestep_map == tuple(range(T))
  for got, want in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(diffusion)):
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_model_sees_original_timesteps(diffusion):
  spaced = gaussian.respace(diffusion, '250')
  seen = []

  def model_fn(x, t):
    jax.debug.callback(seen.append, t)
    return jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],))

  x = jnp.zeros((3, 2))
  jax.jit(spaced.training_losses, static_argnums=0)(
      model_fn, x, jnp.array([0, 1, 249]), jax.random.PRNGKey(0))
  jax.jit(spaced.p_mean_variance, static_argnums=0)(model_fn, x, jnp.array([249, 2, 0]))
  np.testing.assert_array_equal(seen[0], [0, 4, 999])
  np.testing.assert_array_equal(seen[1], [999, 8, 0])


def exact_model_fn(x, t):
  """The Bayes-optimal learned-sigma model for the toy data, at original timesteps t.

  eps = E[eps | x_t]; v the variance of the true p(x_{t-1} | x_t) interpolated in log
  space between the clipped posterior variance and beta_t (clipped to [-1, 1]).
  """
  abar, abar_prev, beta = (jnp.asarray(a, jnp.float32)[t][:, None]
                           for a in (ABAR, ABAR_PREV, BETAS))
  mu, s2 = jnp.asarray(MU, jnp.float32), jnp.asarray(S ** 2, jnp.float32)
  marginal_var = abar * s2 + 1.0 - abar
  eps = jnp.sqrt(1.0 - abar) * (x - jnp.sqrt(abar) * mu) / marginal_var
  post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
  coef1 = beta * jnp.sqrt(abar_prev) / (1.0 - abar)
  true_var = post_var + coef1 ** 2 * s2 * (1.0 - abar) / marginal_var
  min_log = jnp.log(jnp.asarray(np.append(BETAS[1] * (1 - ABAR[0]) / (1 - ABAR[1]),
                                          BETAS[1:] * (1 - ABAR_PREV[1:]) / (1 - ABAR[1:])),
                                jnp.float32)[t])[:, None]
  frac = (jnp.log(true_var) - min_log) / (jnp.log(beta) - min_log)
  return jnp.concatenate([eps, jnp.clip(2 * frac - 1, -1, 1)], -1)


def assert_matches_toy(samples):
  samples = np.asarray(samples)
  np.testing.assert_allclose(samples.mean(0), MU, atol=5 * S.max() / np.sqrt(NUM_SAMPLES))
  np.testing.assert_allclose(samples.std(0), S, rtol=0.06)


@pytest.mark.parametrize('spacing', ['', '250'])
def test_ddpm_samples_the_toy(diffusion, spacing):
  process = gaussian.respace(diffusion, spacing) if spacing else diffusion
  x_init = jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, 2))
  sample = jax.jit(process.p_sample_loop, static_argnums=0)
  assert_matches_toy(sample(exact_model_fn, x_init, jax.random.PRNGKey(1)))


# eta = 1 is DDPM with the posterior (smallest) variance: it needs all the steps on this
# narrow toy (at 100 steps its std is 8% short), and 50 deterministic steps are 7% short.
@pytest.mark.parametrize('spacing,eta', [('250', 0.0), ('', 1.0)])
def test_ddim_samples_the_toy(diffusion, spacing, eta):
  process = gaussian.respace(diffusion, spacing) if spacing else diffusion
  x_init = jax.random.normal(jax.random.PRNGKey(2), (NUM_SAMPLES, 2))
  samples = jax.jit(process.ddim_sample_loop, static_argnums=(0, 3))(
      exact_model_fn, x_init, jax.random.PRNGKey(3), eta)
  assert_matches_toy(samples)


def test_clip_denoised_bounds_the_prediction(diffusion):
  x = jnp.full((2, 3), 5.0)
  model_fn = lambda x, t: jnp.concatenate([-x, jnp.zeros_like(x)], -1)
  out = diffusion.p_mean_variance(model_fn, x, jnp.array([10, 999]), clip_denoised=True)
  assert np.all(np.abs(out['pred_xstart']) <= 1.0)
