"""InceptionV3 in Flax: the FID network and torchvision's classifier.

Two variants share one trunk and differ only in the pooling branches of some blocks:

* 'fid': the network behind published FID / sFID / IS numbers (TF's 2015 Inception graph, as
  ported by pytorch-fid: FIDInceptionA/C/E_1/E_2). Its average pools exclude the zero padding
  (TF's 'SAME' average pool), and the last block (Mixed_7c) max-pools. The head is the
  weight matrix of the graph's 1008-way softmax layer without its bias: Inception Score's
  logits, pool_3 . W, as openai/improved-gan and ADM read 'softmax/logits/MatMul' (the
  converter leaves the checkpoint's fc.bias unused).
* 'torchvision': `torchvision.models.inception_v3`, 1000 ImageNet classes, average pools that
  count the padding.

Input: images [B, 299, 299, 3] in [-1, 1] (both networks were trained on pixels scaled so;
TF's graph computes (x - 128) / 128 itself). Resizing is the caller's job: the FID convention
(pytorch-fid, and clean-fid's 'legacy_pytorch' mode) resizes bilinearly to 299 x 299 without
antialiasing, like `F.interpolate(x, (299, 299), mode='bilinear', align_corners=False)`.
ADM's TF evaluator resizes inside the graph with TF1's legacy bilinear (no half-pixel
centres), so its numbers differ slightly from any half-pixel resize; against an ADM reference
batch the evaluate job feeds `evaluation.embedding.adm_inception_input`, that graph's input.

Outputs of `InceptionV3(images)`:
  features [B, 2048]: the global average pool of Mixed_7c ('pool_3' in TF), used by FID.
  logits [B, num_classes]: the final linear layer on those features; for 'fid' pool_3 . W
    without the bias, whose softmax Inception Score uses.
  spatial [B, 2023], only with `with_spatial=True`: the sFID features of ADM's evaluator,
    TF's 'mixed_6/conv:0'[..., :7]. That tensor is the ReLU output of the 1x1 branch of the
    third 17x17 block, i.e. Mixed_6d.branch1x1 in the torchvision/pytorch-fid naming (TF's
    mixed_4..mixed_7 are Mixed_6b..Mixed_6e), which is also the first 192 channels of the
    Mixed_6d output. We keep channels 0..6 of its [B, 17, 17, 192] NHWC map and flatten in
    (row, column, channel) order as TF does: 17 * 17 * 7 = 2023.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gadc_jax.encoders import resnet

# torchvision's BatchNorm2d(eps=0.001), the value of TF's graph.
_BN_EPS = 1e-3


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (running stats) -> ReLU.

  x [B, H, W, C] -> [B, H', W', features]; `padding` is torch's (rows, columns) zero padding.
  """
  features: int
  kernel_size: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)
  bn_eps: float = _BN_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    ph, pw = self.padding
    x = nn.Conv(self.features, tuple(self.kernel_size), strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=self.bn_eps, dtype=self.dtype,
                     name='bn')(x)
    return nn.relu(x)


def _pool_branch(x: jnp.ndarray, pool: str) -> jnp.ndarray:
  """The 3x3 stride-1 'same' pool that feeds a block's pool branch: [B, H, W, C] -> same.

  'avg' counts the zero padding in the mean (torchvision); 'avg_exclude_pad' does not (TF's
  average pool, hence pytorch-fid's FIDInception A/C/E_1); 'max' is FIDInceptionE_2's pool.
  """
  window, pad = (3, 3), ((1, 1), (1, 1))
  if pool == 'max':
    return nn.max_pool(x, window, strides=(1, 1), padding=pad)
  return nn.avg_pool(x, window, strides=(1, 1), padding=pad,
                     count_include_pad=pool == 'avg')


def _reduce_pool(x: jnp.ndarray) -> jnp.ndarray:
  """3x3 stride-2 max pool without padding (torch's MaxPool2d(3, 2)): H -> (H - 3) // 2 + 1."""
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): [B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]."""
  pool_features: int
  pool: str = 'avg'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, dtype=self.dtype)
    b1 = conv(64, (1, 1), name='branch1x1')(x)
    b5 = conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, (1, 1), name='branch_pool')(_pool_branch(x, self.pool))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Reduction 35 -> 17 (Mixed_6a): [B, 35, 35, C] -> [B, 17, 17, 480 + C]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, dtype=self.dtype)
    b3 = conv(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _reduce_pool(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (Mixed_6b..e): [B, 17, 17, C] -> [B, 17, 17, 768]."""
  channels_7x7: int
  pool: str = 'avg'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, dtype=self.dtype)
    c7 = self.channels_7x7
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = conv(192, (1, 1), name='branch1x1')(x)
    b7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = conv(c7, **row, name='branch7x7_2')(b7)
    b7 = conv(192, **col, name='branch7x7_3')(b7)
    bd = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = conv(c7, **col, name='branch7x7dbl_2')(bd)
    bd = conv(c7, **row, name='branch7x7dbl_3')(bd)
    bd = conv(c7, **col, name='branch7x7dbl_4')(bd)
    bd = conv(192, **row, name='branch7x7dbl_5')(bd)
    bp = conv(192, (1, 1), name='branch_pool')(_pool_branch(x, self.pool))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Reduction 17 -> 8 (Mixed_7a): [B, 17, 17, C] -> [B, 8, 8, 512 + C]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, dtype=self.dtype)
    b3 = conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _reduce_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 heads (Mixed_7b/c): [B, 8, 8, C] -> [B, 8, 8, 2048]."""
  pool: str = 'avg'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, dtype=self.dtype)

    def split(y, prefix):
      # Two parallel heads on one stem, concatenated: 384 + 384 channels.
      return jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name=f'{prefix}a')(y),
                              conv(384, (3, 1), padding=(1, 0), name=f'{prefix}b')(y)], axis=-1)

    b1 = conv(320, (1, 1), name='branch1x1')(x)
    b3 = split(conv(384, (1, 1), name='branch3x3_1')(x), 'branch3x3_2')
    bd = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = split(conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd), 'branch3x3dbl_3')
    bp = conv(192, (1, 1), name='branch_pool')(_pool_branch(x, self.pool))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """InceptionV3, eval mode (BatchNorm running stats, no dropout, no auxiliary head).

  images [B, 299, 299, 3] in [-1, 1] -> (features [B, 2048], logits [B, num_classes]), or
  (features, logits, spatial [B, 2023]) when `with_spatial`; see the module docstring.

  Attributes:
    num_classes: width of the final linear layer (1008 for 'fid', 1000 for torchvision).
    variant: 'fid' or 'torchvision'.
    transform_input: torchvision's option: re-map ImageNet-normalised input channels to
      (rgb - 0.5) / 0.5 first. Images in [-1, 1] are already what the network wants, so use
      False with torchvision's pretrained weights here (torchvision sets True only so that
      its users can feed ImageNet-normalised tensors); True reproduces torchvision's
      forward for the same input tensor.
    with_spatial: also return the sFID spatial features.
    dtype: computation dtype (e.g. jnp.bfloat16); params stay float32.
  """
  num_classes: int = 1008
  variant: str = 'fid'
  transform_input: bool = False
  with_spatial: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray):
    if self.variant not in ('fid', 'torchvision'):
      raise ValueError(f"variant must be 'fid' or 'torchvision', not {self.variant!r}")
    fid = self.variant == 'fid'
    # The FID network's average pools exclude padding; its last block max-pools.
    avg = 'avg_exclude_pad' if fid else 'avg'
    last = 'max' if fid else 'avg'
    conv = functools.partial(ConvBN, dtype=self.dtype)
    x = images
    if self.transform_input:
      # ImageNet-normalised RGB -> (rgb - 0.5) / 0.5, per channel.
      mean, std = jnp.array(resnet.IMAGENET_MEAN), jnp.array(resnet.IMAGENET_STD)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = x.astype(self.dtype)
    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)                # 149
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)                           # 147
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _reduce_pool(x)                                                     # 73
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)                          # 71
    x = _reduce_pool(x)                                                     # 35
    x = InceptionA(32, avg, self.dtype, name='Mixed_5b')(x)
    x = InceptionA(64, avg, self.dtype, name='Mixed_5c')(x)
    x = InceptionA(64, avg, self.dtype, name='Mixed_5d')(x)
    x = InceptionB(self.dtype, name='Mixed_6a')(x)                          # 17
    x = InceptionC(128, avg, self.dtype, name='Mixed_6b')(x)
    x = InceptionC(160, avg, self.dtype, name='Mixed_6c')(x)
    x = InceptionC(160, avg, self.dtype, name='Mixed_6d')(x)
    # TF's 'mixed_6/conv' = Mixed_6d.branch1x1 = the first 192 channels of Mixed_6d.
    spatial = x[..., :7].reshape(x.shape[0], -1).astype(jnp.float32)
    x = InceptionC(192, avg, self.dtype, name='Mixed_6e')(x)
    x = InceptionD(self.dtype, name='Mixed_7a')(x)                          # 8
    x = InceptionE(avg, self.dtype, name='Mixed_7b')(x)
    x = InceptionE(last, self.dtype, name='Mixed_7c')(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # Inception Score's convention: the FID network's logits leave out the bias.
    logits = nn.Dense(self.num_classes, use_bias=not fid, name='fc')(features)
    if self.with_spatial:
      return features, logits, spatial
    return features, logits


class InceptionV3FID(InceptionV3):
  """The FID network (registry name 'inception_v3_fid')."""
  num_classes: int = 1008
  variant: str = 'fid'


class InceptionV3Torchvision(InceptionV3):
  """torchvision's inception_v3 (registry name 'inception_v3')."""
  num_classes: int = 1000
  variant: str = 'torchvision'
