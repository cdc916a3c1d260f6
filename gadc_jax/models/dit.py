"""DiT and SiT backbones (Peebles & Xie 2023; Ma et al. 2024) in Flax linen, in one file.

A latent [B, H, W, C] is cut into p x p patches, embedded, given fixed 2-D sin-cos positions and
passed through `depth` transformer blocks whose LayerNorms are modulated by the timestep plus
class embedding (adaLN-Zero); a final modulated layer maps every token back to a p x p x C_out
patch. SiT uses the same backbone; only the output width differs (no learned sigma).

Parameter names follow the original DiT release (x_embedder, t_embedder, y_embedder, blocks_N
with attn/qkv, attn/proj, mlp/fc1, mlp/fc2, adaLN_modulation, final_layer) so that converting
a published checkpoint is a rename (see convert.py).

Options used by the GADC paper's D2C setups:
  * REPA (Yu et al. 2025): an MLP projector on the tokens after block `repa_depth`, aligned to
    the patch features of a frozen encoder with `repa_loss`.
  * D2C's Attach, as in the GADC release's LabelEmbedder: per-class text-encoder tokens
    [num_classes, L, W] and their padding mask, reduced by a 1-d convolution over the L tokens,
    refined by a residual MLP and added to the class embedding.
"""

import math
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


# The published sizes: (depth, hidden width, patch, heads). SiT reuses DiT's backbones.
_SIZES = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
DIT_CONFIGS = {
    f'{family}-{size}/{patch}': dict(depth=depth, hidden=hidden, patch=patch, heads=heads)
    for family in ('DiT', 'SiT')
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}

# Frequencies of the timestep embedding, as in DiT's TimestepEmbedder.
FREQUENCY_EMBEDDING_SIZE = 256


class TextTable(NamedTuple):
  """Per-class text-encoder outputs (e.g. FLAN-T5-XL's last hidden state for each class name).

  tokens: [num_classes, L, W] float; mask: [num_classes, L], 1 for a real token, 0 for padding.
  """
  tokens: Any
  mask: Any


def make_dit(name: str, **kwargs) -> 'DiT':
  """The model called `name` (a key of DIT_CONFIGS); kwargs override the other fields.

  DiT predicts noise and a variance interpolation (learn_sigma: 2C output channels), SiT a
  velocity (C channels). The SiT release itself builds its models with learn_sigma=True and
  ignores the second half; pass learn_sigma=True to load such a checkpoint.
  """
  if name not in DIT_CONFIGS:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(DIT_CONFIGS)}')
  kwargs.setdefault('learn_sigma', name.startswith('DiT'))
  return DiT(**{**DIT_CONFIGS[name], **kwargs})


def param_shapes(model: 'DiT', input_size: int = 32, in_channels: int = 4) -> Any:
  """The params tree of `model` as jax.ShapeDtypeStructs, allocating nothing (eval_shape)."""
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  init = lambda x, t, y, text: model.init(jax.random.key(0), x, t, y, train=False,
                                          text_table=text)
  return jax.eval_shape(
      init, spec((1, input_size, input_size, in_channels)), spec((1,)), spec((1,), jnp.int32),
      TextTable(spec((model.num_classes, model.text_tokens, model.text_dim)),
                spec((model.num_classes, model.text_tokens))))['params']


def param_count(model: 'DiT', input_size: int = 32, in_channels: int = 4) -> int:
  """Parameters of `model` on [input_size, input_size, in_channels] latents, as published.

  The count includes the fixed sin-cos position table (tokens x hidden), which the DiT release
  stores as a frozen nn.Parameter and counts; here it is a constant, not a parameter.
  DiT-XL/2 at 256 px (latent 32x32x4): 675,129,632.
  """
  shapes = param_shapes(model, input_size, in_channels)
  tokens = (input_size // model.patch) ** 2
  return sum(a.size for a in jax.tree_util.tree_leaves(shapes)) + tokens * model.hidden


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim], cos then sin."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed MAE/DiT positions for a row-major grid of tokens -> [grid_h * grid_w, dim].

  The first dim/2 channels encode the column index and the last dim/2 the row index, each as
  [sin, cos] over dim/4 frequencies, as in the DiT release (whose meshgrid puts w first).
  """
  if dim % 4:
    raise ValueError(f'DiT hidden width {dim} must be divisible by 4 for 2-D sin-cos positions')
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing='ij')

  def encode(pos):
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def modulate(x: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """x [B, N, D] with per-example shift, scale [B, 1, D]."""
  return x * (1 + scale) + shift


def repa_loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Negative cosine similarity of pred and target [B, N, D], averaged over tokens -> scalar."""
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  # Same epsilon as torch.nn.functional.normalize, so an all-zero token gives 0, not NaN.
  pred = pred / jnp.maximum(jnp.linalg.norm(pred, axis=-1, keepdims=True), 1e-12)
  target = target / jnp.maximum(jnp.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
  return -jnp.mean(jnp.sum(pred * target, axis=-1))


# DiT initialises linear layers with Xavier-uniform and zero biases.
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _layer_norm(name: Optional[str] = None) -> nn.LayerNorm:
  # Affine-free: adaLN supplies the shift and scale.
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, name=name)


class Mlp(nn.Module):
  """Dense layers fc1, fc2, ... of the given widths with `activation` between them."""
  features: Sequence[int]
  activation: Any = nn.silu
  init: Any = _xavier
  out_init: Any = _xavier
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Leading axes flattened: XLA's CPU gradients of a 2-D matmul need no transposed copies.
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    for i, width in enumerate(self.features, 1):
      last = i == len(self.features)
      x = nn.Dense(width, dtype=self.dtype, kernel_init=self.out_init if last else self.init,
                   name=f'fc{i}')(x)
      if not last:
        x = self.activation(x)
    return x.reshape(lead + x.shape[-1:])


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Softmax attention of q, k, v [B, heads, N, head_dim] -> [B, N, heads, head_dim].

  The softmax is normalised after the product with v: one division of the [B, heads, N,
  head_dim] output instead of one of the [B, heads, N, N] weights, forward and backward. On
  the CPU that takes a tenth off a DiT block's train step (benchmarks/train_bench.py).
  """
  logits = jnp.einsum('bhqc,bhkc->bhqk', q, k) / np.sqrt(q.shape[-1]).astype(q.dtype)
  weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  total = jnp.sum(weights, axis=-1, keepdims=True, dtype=jnp.float32).astype(q.dtype)
  return (jnp.einsum('bhqk,bhkc->bhqc', weights, v) / total).transpose(0, 2, 1, 3)


# How a block computes attention (config.train.attention): 'einsum' is `attention` above, the
# fastest on CPUs; 'xla' and 'cudnn' are jax.nn.dot_product_attention's implementations, 'cudnn'
# its fused flash-attention kernel on NVIDIA GPUs (bfloat16 or float16 only). 'auto' picks
# 'cudnn' for bfloat16 on a GPU and 'einsum' elsewhere. All compute the same values.
ATTENTION_IMPLEMENTATIONS = ('auto', 'einsum', 'xla', 'cudnn')


def resolve_attention(implementation: str, dtype) -> str:
  """The implementation 'auto' stands for on this backend and dtype; others as they are."""
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'unknown attention implementation {implementation!r}; expected one of '
                     f'{", ".join(ATTENTION_IMPLEMENTATIONS)}')
  if implementation != 'auto':
    return implementation
  fused = jax.default_backend() == 'gpu' and jnp.dtype(dtype) == jnp.bfloat16
  return 'cudnn' if fused else 'einsum'


def multi_head_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                         implementation: str) -> jnp.ndarray:
  """Attention of q, k, v [B, heads, N, head_dim] -> [B, N, heads, head_dim] by
  `implementation` (not 'auto': see resolve_attention)."""
  if implementation == 'einsum':
    return attention(q, k, v)
  # jax.nn.dot_product_attention takes [B, N, heads, head_dim].
  q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection: [B, N, D] -> [B, N, D]."""
  heads: int
  dtype: Any = jnp.float32
  implementation: str = 'einsum'

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    # Tokens flattened to [B N, D] for the projections, as in Mlp. The fused qkv output is
    # laid out (3, heads, head_dim), as in timm's Attention.
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_xavier, name='qkv')(x.reshape(b * n, d))
    q, k, v = qkv.reshape(b, n, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)
    out = multi_head_attention(q, k, v, self.implementation).reshape(b * n, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_xavier, name='proj')(out).reshape(b, n, d)


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero: tokens x [B, N, D], conditioning c [B, D] -> [B, N, D].

  The modulation starts at zero, so every block starts as the identity.
  """
  heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = 'einsum'

  @nn.compact
  def __call__(self, x, c):
    d = x.shape[-1]
    mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=_zeros,
                   name='adaLN_modulation')(nn.silu(c))[:, None]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
    h = modulate(_layer_norm()(x), shift_msa, scale_msa)
    x = x + gate_msa * Attention(self.heads, self.dtype, self.attention, name='attn')(h)
    h = modulate(_layer_norm()(x), shift_mlp, scale_mlp)
    mlp = Mlp((int(d * self.mlp_ratio), d), activation=lambda y: nn.gelu(y, approximate=True),
              dtype=self.dtype, name='mlp')
    return x + gate_mlp * mlp(h)


# Rematerialisation of the DiT blocks (config.train.remat): what the backward pass keeps from
# the forward pass of each block. 'none' keeps every activation; 'block' keeps only the block's
# input and recomputes the rest; 'dots' keeps the matmul outputs and recomputes the cheap
# elementwise work (norms, modulation, GELU, softmax) between them.
REMAT_POLICIES = {
    'none': None,
    'block': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(remat: str) -> type:
  """DiTBlock, wrapped in nn.remat with the policy named by remat (a key of REMAT_POLICIES)."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f'unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}')
  if remat == 'none':
    return DiTBlock
  return nn.remat(DiTBlock, policy=REMAT_POLICIES[remat])


class FinalLayer(nn.Module):
  """Modulated norm and linear map of tokens x [B, N, D] -> [B, N, features]; zero at start."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    mod = nn.Dense(2 * x.shape[-1], dtype=self.dtype, kernel_init=_zeros,
                   name='adaLN_modulation')(nn.silu(c))[:, None]
    shift, scale = jnp.split(mod, 2, -1)
    x = modulate(_layer_norm()(x), shift, scale)
    return nn.Dense(self.features, dtype=self.dtype, kernel_init=_zeros, name='linear')(x)


class DiT(nn.Module):
  """Diffusion transformer: (x [B, H, W, C], t [B], y [B]) -> [B, H, W, C_out].

  C_out is 2C with learn_sigma (noise and variance interpolation), else C.

  Classifier-free guidance: the label embedding table has a null class (index num_classes).
  `drop_labels` [B] bool replaces the marked labels by it (e.g. the unconditional half of a
  guided batch). Without it, training (train=True, class_dropout_prob > 0) drops each label
  with probability class_dropout_prob using the 'label_dropout' PRNG stream:
  `model.apply(params, x, t, y, train=True, rngs={'label_dropout': key})`.

  With repa_depth > 0 the call returns (out, {'repa': [B, N, repa_dim]}), the projected tokens
  after block repa_depth (N = H W / patch^2, row-major).

  With text_tokens > 0 (D2C's Attach) the call needs `text_table`, a TextTable of every class's
  text-encoder tokens [num_classes, text_tokens, text_dim] and padding mask, and follows the
  GADC release's LabelEmbedder (training/dit.py): the masked tokens [B, L, W] of each label go
  through a convolution of kernel and stride L (one output position, `hidden` channels), then
  e + MLP(e) with MLP = affine-free LayerNorm -> Dense -> SiLU -> Dense, plus the class
  embedding. A dropped label (drop_labels, or the null label num_classes) has all-zero tokens,
  so it still gets the convolution's bias through the MLP, and the null class embedding.
  (In training the release draws the token drop and the class drop independently, so the
  unconditional input its sampler uses is trained 1% of the time at dropout 0.1; here one
  draw drops both, as its sampler's unconditional half does.)
  Initialisation is the release's too: a N(0, 0.02) convolution kernel with torch's default
  bias, Xavier-uniform MLP layers, and a N(0, 1) class table (the release re-initialises the
  convolution in place of the table, which keeps torch's default).

  dtype is the computation dtype (e.g. jnp.bfloat16); parameters stay float32 and the outputs
  are float32. remat names the blocks' rematerialisation policy (REMAT_POLICIES): it trades
  recomputation for activation memory and changes no value. attention names how the blocks
  compute attention (ATTENTION_IMPLEMENTATIONS; 'auto': the fused cuDNN kernel for bfloat16 on
  a GPU).
  """
  depth: int
  hidden: int
  patch: int
  heads: int
  num_classes: int = 1000
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  learn_sigma: bool = True
  repa_depth: int = 0
  repa_dim: int = 768
  repa_hidden: int = 2048
  text_tokens: int = 0
  text_dim: int = 0
  dtype: Any = jnp.float32
  remat: str = 'none'
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x, t, y, *, train: bool, drop_labels: Optional[jnp.ndarray] = None,
               text_table: Optional[jnp.ndarray] = None):
    b, height, width, channels = x.shape
    p = self.patch
    if height % p or width % p:
      raise ValueError(f'image size {height}x{width} is not divisible by the DiT patch size {p}')
    if self.repa_depth > self.depth:
      raise ValueError(f'repa_depth {self.repa_depth} exceeds the model depth {self.depth}')
    gh, gw = height // p, width // p
    c_out = 2 * channels if self.learn_sigma else channels

    # Patch embedding, initialised like a linear layer on the flattened patch.
    x = nn.Conv(self.hidden, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
                name='x_embedder')(x.astype(self.dtype))
    pos = jnp.asarray(sincos_pos_embed_2d(self.hidden, gh, gw), self.dtype)
    x = x.reshape(b, gh * gw, self.hidden) + pos

    normal = nn.initializers.normal(0.02)
    t_emb = Mlp((self.hidden, self.hidden), init=normal, out_init=normal, dtype=self.dtype,
                name='t_embedder')(timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE))

    if drop_labels is None and train and self.class_dropout_prob > 0:
      drop_labels = jax.random.bernoulli(
          self.make_rng('label_dropout'), self.class_dropout_prob, y.shape)
    # The null label (num_classes) is a dropped label too: guidance passes it.
    keep = y < self.num_classes
    if drop_labels is not None:
      keep = keep & ~drop_labels
    labels = jnp.where(keep, y, self.num_classes)
    y_emb = nn.Embed(self.num_classes + 1, self.hidden,
                     embedding_init=nn.initializers.normal(1.0) if self.text_tokens else normal,
                     dtype=self.dtype, name='y_embedder')(labels)
    if self.text_tokens:
      y_emb = y_emb + self._text_embedding(text_table, labels, keep)
    c = t_emb + y_emb

    extras = {}
    block = block_class(self.remat)
    attention = resolve_attention(self.attention, self.dtype)
    for i in range(self.depth):
      x = block(self.heads, self.mlp_ratio, self.dtype, attention, name=f'blocks_{i}')(x, c)
      if i + 1 == self.repa_depth:
        # The REPA projector: a 3-layer SiLU MLP, float32 out for the loss.
        projector = Mlp((self.repa_hidden, self.repa_hidden, self.repa_dim),
                        dtype=self.dtype, name='projector')
        extras['repa'] = projector(x).astype(jnp.float32)

    out = FinalLayer(p * p * c_out, dtype=self.dtype, name='final_layer')(x, c)
    # Tokens (row, col) with channels (p_row, p_col, c) back to the image grid.
    out = out.reshape(b, gh, gw, p, p, c_out).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, height, width, c_out).astype(jnp.float32)
    return (out, extras) if self.repa_depth else out

  def _text_embedding(self, text_table: TextTable, labels, keep):
    """Attach's text branch: labels [B] (kept where `keep` [B]) -> [B, hidden]."""
    k, length, width = self.num_classes, self.text_tokens, self.text_dim
    if text_table is None:
      raise ValueError('this DiT uses class text embeddings: pass text_table, a TextTable of '
                       f'tokens {(k, length, width)} and mask {(k, length)}')
    for what, array, expected, axes in (
        ('tokens', text_table.tokens, (k, length, width), 'classes, tokens, width'),
        ('mask', text_table.mask, (k, length), 'classes, tokens')):
      if tuple(array.shape) != expected:
        raise ValueError(f'text embedding {what} have shape {tuple(array.shape)}, the model '
                         f'expects {expected} ({axes})')
    rows = jnp.where(keep, labels, 0)  # any valid row: dropped labels are zeroed below.
    scale = jnp.where(keep[:, None], jnp.asarray(text_table.mask)[rows], 0)
    tokens = jnp.asarray(text_table.tokens)[rows] * scale[..., None]  # [B, L, W]
    conv = nn.Conv(self.hidden, (length,), strides=(length,), padding='VALID', dtype=self.dtype,
                   kernel_init=nn.initializers.normal(0.02),
                   bias_init=_torch_default_bias(length * width), name='text_conv')
    emb = conv(tokens.astype(self.dtype))[:, 0]  # [B, hidden]
    mlp = Mlp((self.hidden, self.hidden), dtype=self.dtype, name='text_mlp')
    return emb + mlp(_layer_norm()(emb))


def _torch_default_bias(fan_in: int):
  """torch's default bias init of a linear or convolution layer: U(-1/sqrt(fan_in), ...)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)
