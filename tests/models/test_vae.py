"""AutoencoderKL against diffusers' (random weights, tiny configuration)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.models import convert
from gadc_jax.models import vae

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

CHANNELS = (32, 64)
GROUPS = 8


@pytest.fixture(scope='module')
def models():
  torch.manual_seed(0)
  reference = diffusers.AutoencoderKL(
      block_out_channels=CHANNELS, down_block_types=('DownEncoderBlock2D',) * 2,
      up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=2, norm_num_groups=GROUPS,
      latent_channels=4).eval()
  with torch.no_grad():
    for p in reference.parameters():
      if p.ndim == 1:  # Norm scales and biases start at 1 and 0: move them off.
        p.add_(0.1 * torch.randn_like(p))
  ours = vae.AutoencoderKL(channels=CHANNELS, layers_per_block=2, groups=GROUPS)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  return reference, ours, convert.vae_from_diffusers(state, ours)


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def test_encode_matches_diffusers(models):
  reference, ours, params = models
  x = np.random.RandomState(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    dist = reference.encode(torch.from_numpy(x)).latent_dist
  mean, logvar = ours.apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)), method='encode')
  assert mean.shape == (2, 8, 8, 4)  # Two blocks: one downsampling, f = 2.
  np.testing.assert_allclose(mean, _nhwc(dist.mean), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(logvar, _nhwc(dist.logvar), atol=1e-4, rtol=1e-4)


def test_decode_matches_diffusers(models):
  reference, ours, params = models
  z = np.random.RandomState(1).normal(size=(2, 4, 8, 8)).astype(np.float32)
  with torch.no_grad():
    expected = _nhwc(reference.decode(torch.from_numpy(z)).sample)
  out = ours.apply(params, jnp.asarray(z.transpose(0, 2, 3, 1)), method='decode')
  assert out.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_latent_scale_and_sampling():
  assert vae.LATENT_SCALE == 0.18215
  mean = jnp.ones((2, 4, 4, 4))
  z = vae.sample_latents(jax.random.key(0), mean, jnp.full_like(mean, -30.0))
  np.testing.assert_allclose(z, mean, atol=1e-5)


def test_sd_vae_is_f8_with_four_channels():
  model = vae.AutoencoderKL()
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, method='encode'),
                          jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
  mean, _ = jax.eval_shape(lambda p, x: model.apply(p, x, method='encode'), shapes,
                           jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
  assert mean.shape == (1, 32, 32, 4)
