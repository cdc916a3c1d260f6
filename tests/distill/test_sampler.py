"""The guided sampler: zero scales give the plain sampler's samples bit for bit; a guided
step moves the samples; IGD's deviation term pushes a sample away from its neighbour."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gadc_jax import defaults
from gadc_jax import encoders
from gadc_jax import generator
from gadc_jax import networks
from gadc_jax.distill import igd
from gadc_jax.distill import sampler

NUM_CLASSES = 3
SHAPE = (8, 8, 1)
IPC = 4


def _train_cfg():
  cfg = defaults.train()
  cfg.model_overrides = ml_collections.ConfigDict({'depth': 1, 'hidden': 32, 'heads': 2})
  return cfg


def _setup():
  """(dit, params, spec, context): a random tiny DiT and every guidance term active."""
  cfg = _train_cfg()
  model = generator.build_model(cfg, NUM_CLASSES)
  params = generator.init_params(model, jax.random.PRNGKey(0), SHAPE)
  surrogate = encoders.build('digits_cnn', NUM_CLASSES, width=4)
  net_params = networks.init_params(surrogate, 0, SHAPE)
  net_spec = (0, False)
  rng = np.random.default_rng(0)
  real = rng.uniform(-1, 1, (NUM_CLASSES, 5) + SHAPE).astype(np.float32)
  logits_fn = sampler.surrogate_logits_fn(surrogate, net_spec)
  real_grads = jnp.stack([igd.loss_gradient(logits_fn, net_params, jnp.asarray(real[c]),
                                            jnp.full((5,), c)) for c in range(NUM_CLASSES)])
  spec = sampler.GuidanceSpec(terms=sampler.TERMS, window=(1, 4), memory=2,
                              surrogates=((surrogate, net_spec),))
  context = sampler.GuidanceContext(
      scales={t: jnp.float32(0.0) for t in sampler.TERMS},
      # Two samples made, the other slots empty (zeros), as the job hands them over.
      earlier=jnp.asarray(rng.uniform(-1, 1, (NUM_CLASSES, IPC) + SHAPE)
                          * (np.arange(IPC) < 2)[:, None, None, None], jnp.float32),
      count=jnp.int32(2), real=jnp.asarray(real.reshape(NUM_CLASSES, 5, -1)),
      surrogate_params=(net_params,), real_gradients=(real_grads,))
  return model, params, spec, context


# Compiling the guided sampler is most of a minute on the 2-core CPU.
@pytest.mark.slow
@pytest.mark.parametrize('method', ['ddpm', 'ddim'])
def test_zero_scales_equal_the_plain_sampler_bit_for_bit(method):
  model, params, spec, context = _setup()
  labels = jnp.arange(NUM_CLASSES, dtype=jnp.int32)
  key = jax.random.PRNGKey(3)
  kwargs = dict(model=model, method=method, steps=4, cfg_scale=2.0, num_guided_channels=1,
                num_classes=NUM_CLASSES, pixel=True)
  plain = generator._sample(params, labels, key, None, model=model,
                            sampler=(method, 4, 2.0, 1), sit=False, pixel=True, shape=SHAPE,
                            num_classes=NUM_CLASSES, transport_path='linear')
  guided = sampler.sample_next(params, labels, key, context, spec=spec, **kwargs)
  np.testing.assert_array_equal(np.asarray(guided), np.asarray(plain))
  # The same sampler with the terms switched on moves every class's sample.
  context = context.replace(scales={t: jnp.float32(0.05) for t in sampler.TERMS})
  moved = np.asarray(sampler.sample_next(params, labels, key, context, spec=spec, **kwargs))
  assert np.isfinite(moved).all()
  assert (np.abs(moved - np.asarray(plain)).reshape(NUM_CLASSES, -1).max(1) > 1e-4).all()


def test_descending_deviation_moves_away_from_the_nearest_sample():
  rng = np.random.default_rng(1)
  memory = jnp.asarray(rng.standard_normal((6, 16)), jnp.float32)
  mask = jnp.asarray([True, True, True, True, False, True])
  # Start next to memory row 2: it is the nearest neighbour.
  x = memory[2] + 0.1 * jnp.asarray(rng.standard_normal(16), jnp.float32)

  def nearest_distance(v):
    d = np.linalg.norm(np.asarray(memory)[np.asarray(mask)] - np.asarray(v), axis=1)
    return d.min()

  before = nearest_distance(x)
  grad = jax.grad(igd.deviation)
  for _ in range(20):
    g = grad(x, memory, mask)
    x = x - 0.1 * g / jnp.linalg.norm(g) * jnp.linalg.norm(x)
  assert float(igd.deviation(x, memory, mask)) < 0.9
  assert nearest_distance(x) > before + 0.5
  # An empty memory: nothing to deviate from, no push.
  assert float(igd.deviation(x, memory, jnp.zeros(6, bool))) == 0.0
  np.testing.assert_array_equal(np.asarray(grad(x, memory, jnp.zeros(6, bool))), 0.0)
  # Empty slots are zeros: masked, they leave the gradient finite and unchanged.
  padded = memory.at[4].set(0.0)
  np.testing.assert_allclose(np.asarray(grad(x, padded, mask)), np.asarray(grad(x, memory, mask)),
                             rtol=1e-6)
