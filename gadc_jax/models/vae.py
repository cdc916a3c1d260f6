"""AutoencoderKL (the Stable Diffusion VAE used by DiT and SiT) in Flax linen, NHWC.

Images [B, H, W, 3] in [-1, 1] <-> latents [B, H/f, W/f, 4] with f = 2^(len(channels) - 1)
(f = 8 for SD-VAE's block_out_channels (128, 256, 512, 512)). Module and parameter names follow
diffusers' AutoencoderKL with `name.N` written `name_N` (down_blocks_0/resnets_1/conv1, ...),
so converting its state_dict is a rename (convert.vae_from_diffusers).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Latents are multiplied by this before diffusion and divided by it before decoding (SD-VAE's
# `scaling_factor`; it makes the latents of ImageNet roughly unit variance).
LATENT_SCALE = 0.18215

# Every GroupNorm of the VAE uses this epsilon.
_EPS = 1e-6


def _conv(features: int, name: str, kernel: int = 3, stride: int = 1,
          padding='SAME') -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 name=name)


def _norm(groups: int, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=_EPS, name=name)


class ResnetBlock(nn.Module):
  """Pre-activation residual block [B, H, W, C_in] -> [B, H, W, features]."""
  features: int
  groups: int

  @nn.compact
  def __call__(self, x):
    h = _conv(self.features, 'conv1')(nn.silu(_norm(self.groups, 'norm1')(x)))
    h = _conv(self.features, 'conv2')(nn.silu(_norm(self.groups, 'norm2')(h)))
    if x.shape[-1] != self.features:
      x = _conv(self.features, 'conv_shortcut', kernel=1)(x)
    return x + h


class SpatialAttention(nn.Module):
  """Single-head self-attention over the H x W positions with a residual: [B, H, W, C]."""
  groups: int

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = _norm(self.groups, 'group_norm')(x).reshape(b, height * width, 1, c)
    q, k, v = (nn.Dense(c, name=name)(h) for name in ('to_q', 'to_k', 'to_v'))
    h = jax.nn.dot_product_attention(q, k, v).reshape(b, height * width, c)
    return x + nn.Dense(c, name='to_out_0')(h).reshape(x.shape)


class MidBlock(nn.Module):
  """Residual block, attention, residual block at the lowest resolution (shape-preserving)."""
  groups: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, name='resnets_0')(x)
    x = SpatialAttention(self.groups, name='attentions_0')(x)
    return ResnetBlock(c, self.groups, name='resnets_1')(x)


class Downsample(nn.Module):
  """Stride-2 3x3 convolution [B, H, W, C] -> [B, H/2, W/2, C]."""

  @nn.compact
  def __call__(self, x):
    # diffusers pads only at the bottom and right (padding=0 plus an explicit (0, 1) pad).
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x.shape[-1], 'conv', stride=2, padding='VALID')(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling and a 3x3 convolution [B, H, W, C] -> [B, 2H, 2W, C]."""

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 'conv')(x)


class Block(nn.Module):
  """`layers` residual blocks to width `features`, then an optional resampling."""
  features: int
  layers: int
  groups: int
  resample: str = ''  # 'down', 'up' or '' (none).

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = ResnetBlock(self.features, self.groups, name=f'resnets_{i}')(x)
    if self.resample == 'down':
      x = Downsample(name='downsamplers_0')(x)
    elif self.resample == 'up':
      x = Upsample(name='upsamplers_0')(x)
    return x


class Encoder(nn.Module):
  """Images [B, H, W, 3] -> moments [B, H/f, W/f, 2 * latent_channels]."""
  channels: Sequence[int]
  layers_per_block: int
  groups: int
  latent_channels: int

  @nn.compact
  def __call__(self, x):
    x = _conv(self.channels[0], 'conv_in')(x)
    for i, features in enumerate(self.channels):
      last = i == len(self.channels) - 1
      x = Block(features, self.layers_per_block, self.groups, '' if last else 'down',
                name=f'down_blocks_{i}')(x)
    x = MidBlock(self.groups, name='mid_block')(x)
    x = nn.silu(_norm(self.groups, 'conv_norm_out')(x))
    return _conv(2 * self.latent_channels, 'conv_out')(x)


class Decoder(nn.Module):
  """Latents [B, h, w, latent_channels] -> images [B, f h, f w, 3]."""
  channels: Sequence[int]
  layers_per_block: int
  groups: int

  @nn.compact
  def __call__(self, z):
    x = _conv(self.channels[-1], 'conv_in')(z)
    x = MidBlock(self.groups, name='mid_block')(x)
    for i, features in enumerate(reversed(self.channels)):
      last = i == len(self.channels) - 1
      # One more residual block than the encoder, as in the LDM decoder.
      x = Block(features, self.layers_per_block + 1, self.groups, '' if last else 'up',
                name=f'up_blocks_{i}')(x)
    x = nn.silu(_norm(self.groups, 'conv_norm_out')(x))
    return _conv(3, 'conv_out')(x)


class AutoencoderKL(nn.Module):
  """SD-VAE. Defaults are SD-VAE's (f8, 4 latent channels); small values make test models.

  `model.apply(params, x, method='encode')` -> (mean, logvar) and
  `model.apply(params, z, method='decode')` -> images. Callers scale latents by LATENT_SCALE.
  Calling the module encodes and decodes the mean (used to initialise all parameters).
  """
  channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  groups: int = 32
  latent_channels: int = 4

  def setup(self):
    self.encoder = Encoder(self.channels, self.layers_per_block, self.groups,
                           self.latent_channels)
    self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1))
    self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1))
    self.decoder = Decoder(self.channels, self.layers_per_block, self.groups)

  def encode(self, x):
    """Images [B, H, W, 3] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]."""
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    # The clamp of diffusers' DiagonalGaussianDistribution: keeps exp(logvar) finite.
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    """Latents [B, h, w, latent_channels] (unscaled) -> images [B, f h, f w, 3], about [-1, 1]."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x):
    return self.decode(self.encode(x)[0])


def sample_latents(key: jax.Array, mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """A draw from the posterior N(mean, exp(logvar)), same shape as mean."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def latent_shape(image_shape, channels: Sequence[int] = (128, 256, 512, 512),
                 latent_channels: int = 4) -> tuple[int, int, int]:
  """(h, w, c) of the latents of images (H, W, C): the VAE of block widths `channels`
  downsamples by f = 2^(len(channels) - 1) (8 for SD-VAE) into `latent_channels` channels."""
  f = 2 ** (len(channels) - 1)
  height, width = image_shape[0], image_shape[1]
  if height % f or width % f:
    raise ValueError(f'images of {height}x{width} do not divide into the VAE\'s {f}x{f} '
                     'latent cells')
  return height // f, width // f, latent_channels
