"""ResNet-18, ResNet-34 and ResNet-50 in Flax, laid out as torchvision's (v1.5: ResNet-50
strides in the 3x3 conv of a bottleneck), with torchvision's BatchNorm (eps 1e-5, momentum
0.1): by default in eval mode (running statistics); with `train=True` it normalises with the
batch's statistics and updates the running ones (apply with mutable=['batch_stats']).

Input: images [B, H, W, 3] in [-1, 1], typically 224 x 224 (any size >= 32 works: the head
pools globally). torchvision's weights expect ImageNet-normalised RGB, so the module maps
[-1, 1] to that itself. Output: (features [B, 512 (ResNet-18/34) or 2048 (ResNet-50)], the global
average pool of the last stage; logits [B, num_classes]).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1  # torchvision's: the weight of the new batch in the running statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (blocks per stage, bottleneck blocks?)
_LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


def imagenet_normalize(images: jnp.ndarray) -> jnp.ndarray:
  """[-1, 1] RGB [..., 3] -> (rgb01 - mean) / std, what torchvision-style weights expect."""
  rgb01 = (images + 1.0) / 2.0
  return (rgb01 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)


class BatchNorm(nn.Module):
  """torchvision's BatchNorm2d over the last axis of x [..., C], with Flax's variable names.

  train: normalise with the batch's statistics and update the running ones; else use them.
  Its own module rather than nn.BatchNorm because torch updates the running variance with
  the unbiased batch variance, Flax with the biased one: at the last stage of a small image
  (a few positions per channel) the two differ by a large factor.
  """
  train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    if self.train:
      axes = tuple(range(x.ndim - 1))
      count = x.size // features
      if count < 2:
        raise ValueError('BatchNorm in train mode needs more than one value per channel, '
                         f'got input {x.shape}')
      mean = jnp.mean(x, axes, dtype=jnp.float32)
      var = jnp.var(x, axes, dtype=jnp.float32)
      if not self.is_initializing():
        running_mean.value = (1 - _BN_MOMENTUM) * running_mean.value + _BN_MOMENTUM * mean
        running_var.value = ((1 - _BN_MOMENTUM) * running_var.value
                             + _BN_MOMENTUM * var * count / (count - 1))
    else:
      mean, var = running_mean.value, running_var.value
    y = (x - mean) * (jax.lax.rsqrt(var + _BN_EPS) * scale) + bias
    return y.astype(self.dtype)


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3, 1x1 with 4x width).

  x [B, H, W, C] -> [B, H / strides, W / strides, width (basic) or 4 * width (bottleneck)].
  Layers are named conv1, bn1, conv2, ... and downsample_0 / downsample_1 (the projection
  shortcut, present when the shape changes) after torchvision's.
  """
  width: int
  strides: int
  bottleneck: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    bn = functools.partial(BatchNorm, train=train, dtype=self.dtype)
    if self.bottleneck:
      # (out channels, kernel, stride): the stride sits on the 3x3 conv.
      layers = [(self.width, 1, 1), (self.width, 3, self.strides), (4 * self.width, 1, 1)]
    else:
      layers = [(self.width, 3, self.strides), (self.width, 3, 1)]
    y = x
    for i, (out, k, s) in enumerate(layers, start=1):
      y = conv(out, (k, k), strides=s, padding=k // 2, name=f'conv{i}')(y)
      y = bn(name=f'bn{i}')(y)
      if i < len(layers):
        y = nn.relu(y)
    out = layers[-1][0]
    if self.strides != 1 or x.shape[-1] != out:
      x = conv(out, (1, 1), strides=self.strides, name='downsample_0')(x)
      x = bn(name='downsample_1')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """images [B, H, W, 3] in [-1, 1] -> (features [B, 512 or 2048], logits [B, num_classes]).

  `train`: BatchNorm normalises with the batch's statistics and updates the running ones
  (apply with mutable=['batch_stats']); otherwise it uses the running ones.

  Attributes:
    depth: 18, 34 or 50.
    num_classes: width of the final linear layer `fc`.
    dtype: computation dtype; params stay float32.
  """
  depth: int = 50
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False):
    if self.depth not in _LAYOUTS:
      raise ValueError(f'ResNet depth must be one of {sorted(_LAYOUTS)}, not {self.depth}')
    stages, bottleneck = _LAYOUTS[self.depth]
    x = imagenet_normalize(images).astype(self.dtype)
    x = nn.Conv(64, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype,
                name='conv1')(x)
    x = BatchNorm(train, self.dtype, name='bn1')(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(stages):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(64 * 2**stage, strides, bottleneck, self.dtype,
                          name=f'layer{stage + 1}_{block}')(x, train)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features, nn.Dense(self.num_classes, name='fc')(features)


class ResNet18(ResNet):
  """Registry name 'resnet18' (the distillation's teachers and students on ImageNet)."""
  depth: int = 18


class ResNet34(ResNet):
  """Registry name 'resnet34'."""
  depth: int = 34


class ResNet50(ResNet):
  """Registry name 'resnet50'."""
  depth: int = 50
