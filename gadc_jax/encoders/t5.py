"""The T5 encoder in Flax (T5 v1.1 / FLAN-T5, and the original T5), as transformers'
`T5EncoderModel`, and the tokenizer of a local checkpoint folder.

D2C's Attach conditions the diffusion model on class names encoded by FLAN-T5-XL. The
encoder is a stack of pre-norm blocks without biases: T5's LayerNorm (RMS scaling, no mean,
no bias), self-attention without the 1/sqrt(d) scale whose logits get a learned relative
position bias (computed by the first block, bucketed by log distance, shared by all
blocks), and a feed-forward layer: gated GELU (tanh form) for v1.1 / FLAN-T5, ReLU for the
original T5. Token embeddings are not scaled.

    config = t5.T5Config.from_json(json.load(open('flan-t5-xl/config.json')))
    ids, mask = t5.tokenize('flan-t5-xl/tokenizer.json', ['tench', 'goldfish'], length=16)
    tokens = t5.T5Encoder(config).apply(variables, ids, mask)   # [2, 16, 2048]

Inputs: ids [B, L] int32 and mask [B, L] (1 = real token, 0 = padding; padding keys get
no attention). Output: the final LayerNorm's hidden states [B, L, d_model] float32, at every
position (padding positions too, as transformers computes them).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# transformers' activation names -> functions; 'gelu_new' is the tanh approximation.
_ACTIVATIONS = {'relu': nn.relu, 'gelu': lambda x: nn.gelu(x, approximate=False),
                'gelu_new': lambda x: nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The encoder's sizes, as named in a transformers config.json."""
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = 'gated-gelu'

  @classmethod
  def from_json(cls, values: dict) -> 'T5Config':
    """The fields of a config.json's dict (others, such as the decoder's, are ignored)."""
    names = [f.name for f in dataclasses.fields(cls)]
    config = cls(**{k: values[k] for k in names if k in values})
    config.activation  # pylint: disable=pointless-statement  (checks feed_forward_proj)
    return config

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith('gated-')

  @property
  def activation(self) -> str:
    """transformers' activation for feed_forward_proj ('gated-gelu' uses the tanh GELU)."""
    if self.feed_forward_proj == 'gated-gelu':
      return 'gelu_new'
    name = self.feed_forward_proj.removeprefix('gated-')
    if name not in _ACTIVATIONS:
      raise ValueError(f'T5 feed_forward_proj {self.feed_forward_proj!r} is not supported; '
                       f'expected [gated-]{{{",".join(_ACTIVATIONS)}}}')
    return name


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[L, L] bucket of key position j seen from query position i (bidirectional).

  Half the buckets are for keys after the query. Of each half, the first half are exact
  distances; the rest grow logarithmically up to max_distance, beyond which all distances
  share the last bucket.
  """
  distance = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = np.where(distance > 0, half, 0)
  distance = np.abs(distance)
  exact = half // 2
  # max(., 1): distance 0 takes the exact branch; it only keeps log finite.
  far = exact + (np.log(np.maximum(distance, 1) / exact) / math.log(max_distance / exact)
                 * (half - exact)).astype(np.int64)
  far = np.minimum(far, half - 1)
  return buckets + np.where(distance < exact, distance, far)


class LayerNorm(nn.Module):
  """T5's LayerNorm: x / rms(x) * weight, no mean subtracted, no bias: [..., D] -> same."""
  epsilon: float

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],))
    variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return weight * (x * jax.lax.rsqrt(variance + self.epsilon)).astype(x.dtype)


class Attention(nn.Module):
  """Unscaled multi-head self-attention with an additive bias: [B, L, D] -> [B, L, D]."""
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """bias: [B or 1, heads, L, L] position bias plus the padding mask's -inf-like terms."""
    cfg = self.config
    dense = lambda width, name: nn.Dense(width, use_bias=False, dtype=self.dtype, name=name)

    def heads(name):  # [B, L, D] -> [B, L, heads, d_kv]
      return dense(cfg.num_heads * cfg.d_kv, name)(x).reshape(
          *x.shape[:2], cfg.num_heads, cfg.d_kv)

    q, k, v = heads('q'), heads('k'), heads('v')
    # T5 folds the 1/sqrt(d_kv) scale into its initialisation, not into the logits.
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) + bias
    weights = nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(*x.shape[:2], -1)
    return dense(cfg.d_model, 'o')(out)


class FeedForward(nn.Module):
  """wo(act(wi_0 x) * wi_1 x) when gated, else wo(act(wi x)): [B, L, D] -> [B, L, D]."""
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    dense = lambda width, name: nn.Dense(width, use_bias=False, dtype=self.dtype, name=name)
    act = _ACTIVATIONS[cfg.activation]
    if cfg.gated:
      h = act(dense(cfg.d_ff, 'wi_0')(x)) * dense(cfg.d_ff, 'wi_1')(x)
    else:
      h = act(dense(cfg.d_ff, 'wi')(x))
    return dense(cfg.d_model, 'wo')(h)


class T5Encoder(nn.Module):
  """ids [B, L] int, mask [B, L] or None -> hidden states [B, L, d_model] float32.

  Attributes:
    config: the checkpoint's sizes (T5Config.from_json of its config.json).
    dtype: computation dtype; params and the norms' statistics stay float32.
  """
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    cfg = self.config
    length = ids.shape[1]
    mask = jnp.ones(ids.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    x = nn.Embed(cfg.vocab_size, cfg.d_model, name='embed_tokens')(ids).astype(self.dtype)
    buckets = relative_position_buckets(length, cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance)
    # [buckets, heads] table, owned by the first block as in the checkpoints.
    table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads,
                     name='relative_attention_bias')
    position_bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]
    padding = (1.0 - mask)[:, None, None, :] * jnp.finfo(jnp.float32).min
    bias = position_bias.astype(jnp.float32) + padding
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, name=name)
    for i in range(cfg.num_layers):
      x = x + Attention(cfg, self.dtype, name=f'block_{i}_attention')(
          norm(f'block_{i}_attention_norm')(x), bias)
      x = x + FeedForward(cfg, self.dtype, name=f'block_{i}_mlp')(
          norm(f'block_{i}_mlp_norm')(x))
    return norm('final_layer_norm')(x).astype(jnp.float32)


def tokenize(tokenizer_file: str, texts: list[str], length: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
  """(ids [N, length] int32, mask [N, length] int32) of `texts`, as the checkpoint's
  tokenizer gives them with padding='max_length' and truncation: the SentencePiece pieces
  and the closing </s>, cut to `length` (</s> kept last), padded with <pad>.

  tokenizer_file is the folder's tokenizer.json (the fast tokenizer, read by the
  `tokenizers` package; transformers' save_pretrained writes it next to spiece.model).
  """
  try:
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError('tokenizing class names needs the tokenizers package '
                     '(pip install tokenizers)') from None
  try:
    tokenizer = Tokenizer.from_file(tokenizer_file)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{tokenizer_file} is not a readable tokenizer.json '
                     f'({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})'
                     ) from None
  pad_id = tokenizer.token_to_id('<pad>')
  if pad_id is None:
    raise ValueError(f'{tokenizer_file} has no <pad> token: not a T5 tokenizer')
  tokenizer.enable_truncation(length)
  tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token='<pad>')
  encodings = tokenizer.encode_batch(list(texts))
  return (np.asarray([e.ids for e in encodings], np.int32),
          np.asarray([e.attention_mask for e in encodings], np.int32))
