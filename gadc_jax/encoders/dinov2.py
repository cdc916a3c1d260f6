"""DINOv2 ViT-S/14, B/14, L/14 in Flax, as transformers' `Dinov2Model` (no registers).

Pre-norm transformer blocks with layer scale; a CLS token; learned position embeddings for a
native grid (518 x 518 input -> 37 x 37 patches for the published checkpoints), resized to
other grids the way transformers 5.x does it: torch's bicubic (A = -0.75, align_corners=False,
edge-clamped, no antialiasing) to (H // 14, W // 14). The facebookresearch hub code resizes
with an antialiased, scale-factor-based bicubic instead, so at non-native sizes its features
differ slightly from these.

Input: images [B, H, W, 3] in [-1, 1]; H, W multiples of 14 (a remainder is cropped off by the
patch conv, as in torch). The module applies the ImageNet normalisation DINOv2 was trained
with. REPA feeds 224 x 224 (16 x 16 patches).

Output: (features [B, D], logits) with features the CLS token after the final LayerNorm
(transformers' `pooler_output`), and logits [B, num_classes] from a linear head on the
features when num_classes > 0 (DINOv2 ships none; it is for linear probes), else None. With
`with_patch_tokens=True` a third output, patch_tokens [B, N, D]: the normed tokens after the
CLS, N = (H // 14) * (W // 14) in row-major order (`last_hidden_state[:, 1:]`, the
`x_norm_patchtokens` REPA aligns to).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gadc_jax.encoders.resnet import imagenet_normalize

# size -> (hidden size D, blocks, heads); head dim 64, MLP width 4 D.
SIZES = {'s': (384, 12, 6), 'b': (768, 12, 12), 'l': (1024, 24, 16)}
PATCH = 14
_LN_EPS = 1e-6


def _torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of torch's 1-D bicubic resize (align_corners=False).

  Keys' cubic with A = -0.75 on the four taps around (i + 0.5) * in / out - 0.5, indices
  clamped to the edge; not renormalised and not antialiased, exactly as torch computes it.
  """
  a = -0.75
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src)
  t = src - base

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  weights = np.stack([far(1 + t), near(t), near(1 - t), far(2 - t)], axis=1)
  taps = np.clip(base[:, None] + np.arange(-1, 3), 0, in_size - 1).astype(int)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
  return matrix


def resize_position_embeddings(pos: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """Patch position embeddings [G*G, D] on a square G x G grid -> [h*w, D] for grid (h, w)."""
  side = int(round(pos.shape[0]**0.5))
  if (side, side) == tuple(grid):
    return pos
  rows = jnp.asarray(_torch_bicubic_matrix(side, grid[0]), jnp.float32)
  cols = jnp.asarray(_torch_bicubic_matrix(side, grid[1]), jnp.float32)
  resized = jnp.einsum('hi,wj,ijd->hwd', rows, cols,
                       pos.reshape(side, side, -1).astype(jnp.float32),
                       precision='highest')
  return resized.reshape(grid[0] * grid[1], -1).astype(pos.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v projections: [B, T, D] -> [B, T, D]."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dim = x.shape[-1]
    head_dim = dim // self.num_heads

    def heads(name):  # [B, T, D] -> [B, T, heads, head_dim]
      return nn.Dense(dim, dtype=self.dtype, name=name)(x).reshape(
          *x.shape[:-1], self.num_heads, head_dim)

    q, k, v = heads('q_proj'), heads('k_proj'), heads('v_proj')
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim**-0.5
    weights = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(x.shape)
    return nn.Dense(dim, dtype=self.dtype, name='o_proj')(out)


class LayerScale(nn.Module):
  """Learned per-channel residual scale (`lambda1`): [..., D] -> [..., D]."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return x * self.param('lambda1', nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)


class Block(nn.Module):
  """Pre-norm ViT block with layer scale (transformers' Dinov2Layer): [B, T, D] -> same."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dim = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name=name)
    y = Attention(self.num_heads, self.dtype, name='attention')(norm('norm1')(x))
    x = x + LayerScale(name='layer_scale1')(y)
    y = nn.Dense(4 * dim, dtype=self.dtype, name='fc1')(norm('norm2')(x))
    # transformers' 'gelu' is the exact erf form.
    y = nn.Dense(dim, dtype=self.dtype, name='fc2')(nn.gelu(y, approximate=False))
    return x + LayerScale(name='layer_scale2')(y)


class Dinov2(nn.Module):
  """DINOv2 ViT: images [B, H, W, 3] in [-1, 1] -> (features [B, D], logits or None), and
  patch_tokens [B, N, D] too when `with_patch_tokens`; see the module docstring.

  Attributes:
    size: 's', 'b' or 'l' (see SIZES).
    num_classes: width of an optional linear head on the features; 0 for none.
    image_size: side of the native input the position embeddings were trained for (518 for
      the published checkpoints); other input sizes resize them.
    with_patch_tokens: also return the normed patch tokens.
    dtype: computation dtype; params stay float32.
  """
  size: str = 'b'
  num_classes: int = 0
  image_size: int = 518
  with_patch_tokens: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray):
    if self.size not in SIZES:
      raise ValueError(f'DINOv2 size must be one of {sorted(SIZES)}, not {self.size!r}')
    dim, depth, num_heads = SIZES[self.size]
    x = imagenet_normalize(images).astype(self.dtype)
    x = nn.Conv(dim, (PATCH, PATCH), strides=PATCH, padding='VALID', dtype=self.dtype,
                name='patch_embeddings')(x)
    batch, grid = x.shape[0], x.shape[1:3]
    x = x.reshape(batch, -1, dim)
    native = (self.image_size // PATCH)**2
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param('cls_token', init, (1, 1, dim))
    pos = self.param('position_embeddings', init, (1, native + 1, dim))
    pos = jnp.concatenate([pos[0, :1], resize_position_embeddings(pos[0, 1:], grid)])
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)).astype(self.dtype), x], axis=1)
    x = x + pos.astype(self.dtype)
    for i in range(depth):
      x = Block(num_heads, self.dtype, name=f'layer_{i}')(x)
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name='layernorm')(x).astype(jnp.float32)
    features = x[:, 0]
    logits = nn.Dense(self.num_classes, name='head')(features) if self.num_classes else None
    if self.with_patch_tokens:
      return features, logits, x[:, 1:]
    return features, logits


class Dinov2S14(Dinov2):
  """Registry name 'dinov2_s14'."""
  size: str = 's'


class Dinov2B14(Dinov2):
  """Registry name 'dinov2_b14'."""
  size: str = 'b'


class Dinov2L14(Dinov2):
  """Registry name 'dinov2_l14'."""
  size: str = 'l'
