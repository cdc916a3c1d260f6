"""Converters from published PyTorch checkpoints to the Flax params of dit.py and vae.py.

A state_dict is a dict of name -> numpy array (`load_torch_state_dict` makes one from a file).
Each converter renames the tensors, transposes linear and convolution weights to Flax's
layouts ([in, out] and [kh, kw, in, out]), and checks the result against the parameter shapes
of the target model, so a missing tensor, a leftover one, or a checkpoint of another model size
is a ValueError that names the tensors.
"""

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gadc_jax.models import dit as dit_lib
from gadc_jax.models import vae as vae_lib

StateDict = Mapping[str, np.ndarray]
_Flat = Dict[Tuple[str, ...], Tuple[str, np.ndarray]]  # Flax path -> (torch name, array).


def load_torch_state_dict(path: str, key: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Reads a .pt/.pth/.bin (torch.load) or .safetensors file -> {name: float32 array}.

  A training checkpoint that holds several state_dicts (DiT's {'model', 'ema', 'opt', ...})
  needs `key` to pick one (e.g. 'ema').
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError('reading .safetensors needs the safetensors package '
                      '(pip install safetensors)') from None
    try:
      return {k: v.astype(np.float32) for k, v in load_file(path).items()}
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path} is not a safetensors checkpoint ({e})') from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError('converting a PyTorch checkpoint needs torch (pip install torch); '
                    'it is only needed for the conversion') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path} is not a PyTorch checkpoint ({type(e).__name__}: {e})') from None
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      keys = list(obj) if isinstance(obj, Mapping) else []
      raise ValueError(f'{path} has no entry {key!r} (entries: {keys[:10]})')
    obj = obj[key]
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path} does not hold a state_dict (found {type(obj).__name__})')
  if not all(isinstance(v, torch.Tensor) for v in obj.values()):
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    raise ValueError(f'{path} is a training checkpoint, not a state_dict: pass key= one of '
                    f'{nested}')
  return {k: v.detach().float().cpu().numpy() for k, v in obj.items()}


def dit_from_torch(state_dict: StateDict, model: dit_lib.DiT, in_channels: int = 4):
  """A state_dict in the original DiT release layout -> {'params': ...} for `model`.

  Names: x_embedder.proj, t_embedder.mlp.{0,2}, y_embedder.embedding_table,
  blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1},
  final_layer.{adaLN_modulation.1, linear}; the fixed pos_embed is recomputed, not read.
  The GADC release (training/dit.py) adds the text branch, y_embedder.conv (a Conv1d) and
  y_embedder.mlp.{1,3} (after an affine-free LayerNorm), and one REPA projector,
  projectors.0.{0,2,4}; a checkpoint with several projectors is refused (one is supported).
  """
  renames = [
      (r'x_embedder\.proj', 'x_embedder'),
      (r't_embedder\.mlp\.0', 't_embedder.fc1'),
      (r't_embedder\.mlp\.2', 't_embedder.fc2'),
      (r'y_embedder\.embedding_table', 'y_embedder'),
      (r'y_embedder\.conv', 'text_conv'),
      (r'y_embedder\.mlp\.1', 'text_mlp.fc1'),
      (r'y_embedder\.mlp\.3', 'text_mlp.fc2'),
      (r'projectors\.0\.0', 'projector.fc1'),
      (r'projectors\.0\.2', 'projector.fc2'),
      (r'projectors\.0\.4', 'projector.fc3'),
      (r'adaLN_modulation\.1', 'adaLN_modulation'),
      (r'blocks\.(\d+)', r'blocks_\1'),
  ]
  flat = {}
  for name, array in state_dict.items():
    if name == 'pos_embed':
      continue
    target = name
    for pattern, repl in renames:
      target = re.sub(pattern, repl, target)
    _put(flat, name, target, array)
  # One patch is enough: no parameter depends on the image size.
  return _check(flat, dit_lib.param_shapes(model, model.patch, in_channels), 'DiT')


def dit_from_diffusers(state_dict: StateDict, model: dit_lib.DiT, in_channels: int = 4):
  """A state_dict of diffusers' DiTTransformer2DModel -> {'params': ...} for `model`.

  diffusers keeps a copy of the timestep and class embedders in every block (norm1.emb); the
  model shares one, so the copies must agree (they do in converted checkpoints; block 0's is
  used, as diffusers' own output layer does).
  Note diffusers computes the timestep frequencies with downscale_freq_shift=1, the original
  release (whose weights diffusers ships) and this model with 0.
  """
  renames = [
      (r'^pos_embed\.proj', 'x_embedder'),
      (r'^transformer_blocks\.(\d+)\.norm1\.linear', r'blocks_\1.adaLN_modulation'),
      (r'^transformer_blocks\.(\d+)\.attn1\.to_out\.0', r'blocks_\1.attn.proj'),
      (r'^transformer_blocks\.(\d+)\.ff\.net\.0\.proj', r'blocks_\1.mlp.fc1'),
      (r'^transformer_blocks\.(\d+)\.ff\.net\.2', r'blocks_\1.mlp.fc2'),
      (r'^proj_out_1', 'final_layer.adaLN_modulation'),
      (r'^proj_out_2', 'final_layer.linear'),
  ]
  embedder = re.compile(r'^transformer_blocks\.(\d+)\.norm1\.emb\.(.*)$')
  qkv = re.compile(r'^transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.(weight|bias)$')
  parts, first = {}, {}
  flat = {}
  for name, array in state_dict.items():
    if name == 'pos_embed.pos_embed':
      continue
    if m := embedder.match(name):
      rest = m.group(2)
      if rest not in first:
        first[rest] = (name, array)
      elif not np.array_equal(first[rest][1], array):
        raise ValueError(f'{name} differs from {first[rest][0]}: this DiT shares one '
                        'timestep/class embedder across blocks')
      continue
    if m := qkv.match(name):
      parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = (name, array)
      continue
    target = name
    for pattern, repl in renames:
      target = re.sub(pattern, repl, target)
    _put(flat, name, target, array)
  for rest, (name, array) in first.items():
    target = (rest.replace('timestep_embedder.linear_1', 't_embedder.fc1')
              .replace('timestep_embedder.linear_2', 't_embedder.fc2')
              .replace('class_embedder.embedding_table', 'y_embedder'))
    _put(flat, name, target, array)
  for (block, kind), qkv_parts in parts.items():
    missing = [f'transformer_blocks.{block}.attn1.to_{p}.{kind}' for p in 'qkv'
               if p not in qkv_parts]
    if missing:
      raise ValueError(f'DiT checkpoint lacks {", ".join(missing)}')
    # The fused projection stacks q, k, v along the output axis, as the original release does.
    fused = np.concatenate([qkv_parts[p][1] for p in 'qkv'], axis=0)
    _put(flat, qkv_parts['q'][0], f'blocks_{block}.attn.qkv.{kind}', fused)
  # One patch is enough: no parameter depends on the image size.
  return _check(flat, dit_lib.param_shapes(model, model.patch, in_channels), 'DiT')


def vae_from_diffusers(state_dict: StateDict, model: vae_lib.AutoencoderKL):
  """A state_dict of diffusers' AutoencoderKL -> {'params': ...} for `model`.

  Names map one to one with `name.N` -> `name_N`; the attention names of older diffusers
  checkpoints (query, key, value, proj_attn) are accepted too.
  """
  legacy = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out_0'}
  flat = {}
  for name, array in state_dict.items():
    target = re.sub(r'\.(\d+)(?=\.)', r'_\1', name)
    target = re.sub(r'\.(query|key|value|proj_attn)\.',
                    lambda m: f'.{legacy[m.group(1)]}.', target)
    _put(flat, name, target, array)
  x = jax.ShapeDtypeStruct((1, 2 ** len(model.channels), 2 ** len(model.channels), 3),
                           jnp.float32)
  shapes = jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x)['params']
  return _check(flat, shapes, 'AutoencoderKL')


def _put(flat: _Flat, name: str, target: str, array: np.ndarray) -> None:
  """Stores torch tensor `name` at the dotted Flax path `target` in Flax's layout."""
  *path, leaf = target.split('.')
  array = np.asarray(array, np.float32)
  if leaf == 'weight':
    if array.ndim >= 3:  # Convolution [out, in, *window] -> [*window, in, out].
      leaf, array = 'kernel', array.transpose(*range(2, array.ndim), 1, 0)
    elif array.ndim == 2 and path[-1] == 'y_embedder':
      leaf = 'embedding'
    elif array.ndim == 2:  # Linear [out, in] -> [in, out].
      leaf, array = 'kernel', array.T
    else:  # Normalisation.
      leaf = 'scale'
  flat[tuple(path) + (leaf,)] = (name, array)


def _check(flat: _Flat, shapes: Any, what: str):
  """Builds {'params': tree} from `flat`, or a ValueError naming what does not fit."""
  expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  if not flat:
    raise ValueError(f'the checkpoint holds no tensors; it is not a {what} checkpoint')
  # Shapes first: a checkpoint of another size usually also has other blocks, and the
  # shapes say more about what it is.
  for path, (name, array) in flat.items():
    if path in expected and array.shape != expected[path].shape:
      raise ValueError(
          f'{what} checkpoint tensor {name} has shape {_torch_layout(path, array.shape)}, '
          f'the model expects {_torch_layout(path, expected[path].shape)}; the checkpoint '
          'is of another model size or configuration')
  missing = ['.'.join(p) for p in expected if p not in flat]
  if missing:
    raise ValueError(f'{what} checkpoint lacks {len(missing)} of {len(expected)} parameters '
                    f'(e.g. {", ".join(missing[:5])}); is it a checkpoint of this model?')
  unexpected = sorted(name for p, (name, _) in flat.items() if p not in expected)
  if unexpected:
    raise ValueError(f'{what} checkpoint has {len(unexpected)} tensors this model lacks '
                    f'(e.g. {", ".join(unexpected[:5])}); is it another model?')
  params = {path: jnp.asarray(flat[path][1]) for path in expected}
  return {'params': flax.traverse_util.unflatten_dict(params)}


def _torch_layout(path: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The shape a Flax parameter has in the torch checkpoint (undoes `_put`'s transposes)."""
  if path[-1] == 'kernel' and len(shape) >= 3:
    return (shape[-1], shape[-2], *shape[:-2])
  if path[-1] == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)
