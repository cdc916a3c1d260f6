"""The generator's reading of config.train / config.sampler: the text_embeddings job's .npz
(and clear errors for other files), which channels guidance mixes (against DiT's
forward_with_cfg) and the SiT path it samples with (on a Gaussian toy whose exact velocity is
known)."""

import math
import os
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gadc_jax import defaults
from gadc_jax import generator
from tests.conftest import REPO

NUM_CLASSES = 10


def _text_cfg(path):
  return ml_collections.ConfigDict({'text_embeddings': str(path)})


def _write(path, **arrays):
  np.savez(path, **arrays)
  return _text_cfg(path)


def test_reads_tokens_and_mask(tmp_path):
  rng = np.random.default_rng(0)
  tokens = rng.standard_normal((4, 16, 8)).astype(np.float16)
  mask = (np.arange(16) < np.array([[3], [16], [1], [5]])).astype(np.int64)
  table = generator.load_text_table(_write(tmp_path / 't.npz', tokens=tokens, mask=mask), 4)
  assert table.tokens.dtype == table.mask.dtype == np.float32
  np.testing.assert_array_equal(table.tokens, tokens.astype(np.float32))
  np.testing.assert_array_equal(table.mask, mask)
  assert generator.load_text_table(_text_cfg(''), 4) is None


@pytest.mark.parametrize('arrays,message', [
    ({'tokens': np.zeros((4, 16, 8))}, r"holds \['tokens'\]; expected a .npz with 'tokens'"),
    ({'tokens': np.zeros((4, 16)), 'mask': np.ones((4, 16))}, r'tokens \(4, 16\) and mask'),
    ({'tokens': np.zeros((4, 16, 8)), 'mask': np.ones((4, 15))}, r'mask \(4, 15\)'),
    ({'tokens': np.zeros((3, 16, 8)), 'mask': np.ones((3, 16))}, '3 classes, the dataset 4'),
    ({'tokens': np.full((4, 16, 8), np.nan), 'mask': np.ones((4, 16))}, '512 non-finite'),
    ({'tokens': np.zeros((4, 16, 8), int), 'mask': np.ones((4, 16))}, 'finite floats'),
    ({'tokens': np.zeros((4, 16, 8)), 'mask': np.full((4, 16), 2)}, r'only 0 .* found \[2\]'),
])
def test_wrong_contents(tmp_path, arrays, message):
  with pytest.raises(ValueError, match=message):
    generator.load_text_table(_write(tmp_path / 't.npz', **arrays), 4)


def test_wrong_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.npz does not exist'):
    generator.load_text_table(_text_cfg(tmp_path / 'missing.npz'), 4)
  np.save(tmp_path / 'old.npy', np.zeros((4, 16, 8), np.float32))  # the former format.
  with pytest.raises(ValueError, match=r'old.npy holds one array \(4, 16, 8\).*text_embeddings'):
    generator.load_text_table(_text_cfg(tmp_path / 'old.npy'), 4)
  (tmp_path / 'junk.npz').write_text('not numpy')
  with pytest.raises(ValueError, match='junk.npz is not a .npz file'):
    generator.load_text_table(_text_cfg(tmp_path / 'junk.npz'), 4)
  _write(tmp_path / 'cut.npz', tokens=np.zeros((4, 16, 8)), mask=np.ones((4, 16)))
  data = (tmp_path / 'cut.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='cut.npz'):
    generator.load_text_table(_text_cfg(tmp_path / 'cut.npz'), 4)


def train_config(space: str, model: str = 'DiT-S/2') -> ml_collections.ConfigDict:
  cfg = defaults.train()
  cfg.update(dict(model=model, space=space))
  return cfg


def dit_forward_with_cfg(model_out, cfg_scale, guided):
  """DiT's forward_with_cfg (models.py) after its forward pass, in NumPy on NCHW.

  model_out [2B, C', H, W] is the output on the doubled batch (x for the labels, then x
  for the null label); the release guides `guided` = 3 channels, the "standard approach"
  its comment names all in_channels. Returns the first half, what the sampler keeps.
  """
  eps, rest = model_out[:, :guided], model_out[:, guided:]
  cond_eps, uncond_eps = np.split(eps, 2)
  half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
  eps = np.concatenate([half_eps, half_eps])
  return np.concatenate([eps, rest], axis=1)[:len(model_out) // 2]


class LearnedSigmaToy(nn.Module):
  """A label-conditional model with a learned-sigma DiT's output: [B, H, W, 2C], the eps
  channels then the variance channels."""

  def __call__(self, x, t, y, train=False, text_table=None):
    y = y.astype(jnp.float32)[:, None, None, None]
    t = t.astype(jnp.float32)[:, None, None, None] / 1000.0
    return jnp.concatenate([jnp.sin(x * (1.0 + y)) + t, jnp.tanh(x - y)], axis=-1)


@pytest.mark.parametrize('space,channels,guided', [
    ('latent', 4, 3),  # SD-VAE latents: the release's 3 of 4.
    ('pixel', 3, 3),   # RGB: every channel (the release's 3 are all of them).
    ('pixel', 1, 1),   # grey: every channel, not the variance channels the release's 3 reach.
])
def test_default_guidance_is_dit_forward_with_cfg(space, channels, guided):
  cfg = train_config(space)
  model = LearnedSigmaToy()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 4, 4, channels)), jnp.float32)
  t = jnp.array([3, 500, 999])
  labels = jnp.array([0, 4, 9])
  scale = 4.0

  num_guided = generator.guided_channels(cfg, cfg.sampler, channels)
  got = generator.conditional_model_fn(model, {}, labels, None, scale, NUM_CLASSES,
                                       num_guided)(x, t)

  doubled = model.apply({}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                        jnp.concatenate([labels, jnp.full_like(labels, NUM_CLASSES)]))
  want = dit_forward_with_cfg(np.asarray(doubled).transpose(0, 3, 1, 2), scale, guided)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-6,
                             atol=1e-6)


def test_guided_channels_config():
  latent, pixel = train_config('latent'), train_config('pixel')
  sampler = defaults.sampler()
  assert generator.guided_channels(latent, sampler, 4) == 3
  assert generator.guided_channels(pixel, sampler, 3) == 3
  sampler.guided_channels = 4
  assert generator.guided_channels(latent, sampler, 4) == 4
  sampler.guided_channels = 5
  with pytest.raises(ValueError, match=r'config.sample.sampler.guided_channels is 5 .* 4'):
    generator.guided_channels(latent, sampler, 4, 'config.sample.sampler')
  imagenet = runpy.run_path(os.path.join(REPO, 'configs', 'imagenet.py'))['get_config']()
  assert imagenet.train.sampler.guided_channels == imagenet.sample.sampler.guided_channels == 3


# The toy data: every element of an image is N(MU, S^2), independently.
MU, S = 0.5, 0.8
NUM_SAMPLES = 4000
IMAGE_SHAPE = (2, 2, 2)


def path_coefficients(path, t):
  """(alpha, alpha', sigma, sigma') of SiT's ICPlan (linear) and GVPCPlan (gvp)."""
  if path == 'linear':
    return t, jnp.ones_like(t), 1.0 - t, -jnp.ones_like(t)
  half_pi = math.pi / 2
  return (jnp.sin(half_pi * t), half_pi * jnp.cos(half_pi * t), jnp.cos(half_pi * t),
          -half_pi * jnp.sin(half_pi * t))


class ExactVelocity(nn.Module):
  """The Bayes-optimal velocity E[alpha' x1 + sigma' x0 | x_t] of the toy on `interpolant`,
  with a SiT's call signature (labels and text ignored)."""
  interpolant: str

  def __call__(self, x, t, y, train=False, text_table=None):
    alpha, d_alpha, sigma, d_sigma = (c[:, None, None, None]
                                      for c in path_coefficients(self.interpolant, t))
    var = alpha ** 2 * S ** 2 + sigma ** 2
    noise = sigma * (x - alpha * MU) / var
    data = MU + alpha * S ** 2 * (x - alpha * MU) / var
    return d_alpha * data + d_sigma * noise


@pytest.mark.parametrize('path', ('linear', 'gvp'))
@pytest.mark.parametrize('method', ('ode', 'sde'))
def test_sit_samples_the_toy_on_its_training_path(path, method):
  # For a velocity model the ODE is path-free; the SDE's score and noise level are not.
  cfg = train_config('pixel', 'SiT-S/2')
  cfg.transport_path = path
  sampler = defaults.sampler()
  sampler.update(dict(method=method, steps=250, cfg_scale=1.0))
  x = generator.sample_model_space(cfg, ExactVelocity(path), {},
                                   np.zeros(NUM_SAMPLES, np.int32), jax.random.PRNGKey(0),
                                   sampler, NUM_CLASSES, IMAGE_SHAPE)
  x = np.asarray(x, np.float64)
  assert x.shape == (NUM_SAMPLES,) + IMAGE_SHAPE
  np.testing.assert_allclose(x.mean(), MU, atol=5 * S / math.sqrt(x.size))
  np.testing.assert_allclose(x.std(), S, rtol=0.03)
