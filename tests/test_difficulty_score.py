"""D2C's difficulty score against the loss written out in NumPy, on a DiT of random weights."""

import jax
import numpy as np

from gadc_jax import difficulty
from gadc_jax import generator
from gadc_jax import defaults


def direct_scores(model, params, x0, labels, positions, timesteps, num_noise: int,
                  seed: int) -> np.ndarray:
  """D2C's score in NumPy: x_t from the linear schedule's abar_t (DDPM's betas 1e-4 .. 0.02
  over 1000 steps, in float64), the eps MSE of the model at each timestep and noise draw,
  averaged. Image i's draws are jax.random.normal of fold_in(PRNGKey(seed), positions[i]):
  that is how the score's noise is defined, not how it is computed."""
  x0 = np.asarray(x0, np.float64)
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
  key = jax.random.PRNGKey(seed)
  noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, int(p)),
                                                 (num_noise,) + x0.shape[1:]))
                    for p in positions], axis=1).astype(np.float64)
  apply = jax.jit(lambda x, t: model.apply(params, x, t, np.asarray(labels, np.int32),
                                           train=False))
  total = np.zeros(len(x0))
  for t in timesteps:
    for eps in noise:
      x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1.0 - abar[t]) * eps
      out = np.asarray(apply(x_t.astype(np.float32), np.full(len(x0), t, np.int32)))
      total += np.mean((eps - out[..., :x0.shape[-1]]) ** 2, axis=(1, 2, 3))
  return total / (len(timesteps) * num_noise)


def _tiny_dit():
  cfg = defaults.train()
  cfg.model_overrides.update({'depth': 1, 'hidden': 32, 'heads': 2})
  model = generator.build_model(cfg, num_classes=3)

  @jax.jit
  def random_params(key):
    # adaLN-Zero starts every output at 0; random weights make the model's eps depend on
    # x_t, t and y, so that the test sees each of them.
    leaves, tree = jax.tree.flatten(generator.init_params(model, key, (8, 8, 2)))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, l.shape)
                                     for k, l in zip(keys, leaves)])

  return model, random_params(jax.random.PRNGKey(1))


def test_score_equals_the_loss_written_out():
  model, params = _tiny_dit()
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (5, 8, 8, 2)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0])
  positions = np.array([7, 0, 1300, 42, 9])
  timesteps, num_noise, seed = (0, 250, 999), 2, 3
  got = difficulty._scores(params, x0, labels, positions, jax.random.PRNGKey(seed), None,
                           model=model, timesteps=timesteps, num_noise=num_noise)
  expected = direct_scores(model, params, x0, labels, positions, timesteps, num_noise, seed)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)
  # An image's score is its own: the same at another row of the batch.
  order = np.array([3, 1, 4, 0, 2])
  again = difficulty._scores(params, x0[order], labels[order], positions[order],
                             jax.random.PRNGKey(seed), None, model=model,
                             timesteps=timesteps, num_noise=num_noise)
  np.testing.assert_allclose(np.asarray(again), np.asarray(got)[order], rtol=1e-5)
