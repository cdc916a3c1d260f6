"""Converters from published PyTorch checkpoints to the Flax encoders' variables.

The Flax modules name their layers after the PyTorch ones, so a converter walks the Flax
variables the module expects (shapes from `jax.eval_shape`, nothing computed) and, for each,
finds the PyTorch tensor of the corresponding name, checks its shape and lays it out the Flax
way (conv [O, I, kh, kw] -> [kh, kw, I, O], linear [O, I] -> [I, O]). Tensors the module does
not use (torchvision's AuxLogits, BatchNorm's num_batches_tracked, DINOv2's mask_token, the
FID Inception's fc.bias) are ignored; anything missing or misshaped is a ValueError naming
the tensors.

    variables = inception_from_torch('pt_inception-2015-12-05-6726825d.pth', 'fid')
    features, logits = InceptionV3FID().apply(variables, images)

The `*_from_torch` functions take a state dict of numpy arrays (name -> array; torch CPU
tensors work too) or a path to a checkpoint file, read by `load_state_dict`;
`t5_encoder_from_folder` reads a transformers checkpoint folder (config.json and weights).
"""

import functools
import json
import os
import re
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gadc_jax.encoders import dinov2
from gadc_jax.encoders import inception
from gadc_jax.encoders import resnet
from gadc_jax.encoders import t5

StateDict = Mapping[str, Any]
Source = Union[str, StateDict]

# Leaf names: Flax -> PyTorch.
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight',
               'mean': 'running_mean', 'var': 'running_var'}

# Older checkpoints of transformers' Dinov2Model (those published as facebook/dinov2-*) use
# the pre-5.0 attention names; transformers renames them on load, and so do we.
_DINOV2_LEGACY_NAMES = (
    ('.attention.attention.query.', '.attention.q_proj.'),
    ('.attention.attention.key.', '.attention.k_proj.'),
    ('.attention.attention.value.', '.attention.v_proj.'),
    ('.attention.output.dense.', '.attention.o_proj.'),
)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {tensor name: float32 numpy array}.

  '*.safetensors' files are read with the safetensors package; anything else with
  `torch.load(map_location='cpu', weights_only=True)`, which needs torch installed (it is
  not a runtime dependency of gadc_jax: `pip install torch` to convert). A checkpoint that
  wraps its weights as {'state_dict': ...} or {'model': ...} is unwrapped.
  """
  try:
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'reading {path} needs {e.name} installed (pip install {e.name})') from None
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path} is not a readable safetensors file ({_short(e)})') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except Exception as e:  # pylint: disable=broad-except
    # Truncated zip archives, non-pickles and pickles of arbitrary objects all land here.
    raise ValueError(f'{path} is not a readable PyTorch checkpoint, or it is truncated '
                    f'({_short(e)})') from None
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
    raise ValueError(f'{path} holds a {type(obj).__name__} without tensors, not a state dict')
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()
          if torch.is_tensor(v) and v.is_floating_point()}


def inception_from_torch(state_dict: Source, variant: str = 'fid',
                         num_classes: int | None = None) -> dict:
  """Flax variables {'params', 'batch_stats'} for `inception.InceptionV3(variant=...)`.

  Args:
    state_dict: pytorch-fid's FID Inception weights (variant 'fid', e.g.
      pt_inception-2015-12-05-6726825d.pth) or torchvision's inception_v3 weights (variant
      'torchvision'), as a dict of arrays or a file path.
    variant: 'fid' or 'torchvision'.
    num_classes: width of `fc`; default 1008 for 'fid', 1000 for 'torchvision'.
  """
  if variant not in ('fid', 'torchvision'):
    raise ValueError(f"Inception variant must be 'fid' or 'torchvision', not {variant!r}")
  if num_classes is None:
    num_classes = 1008 if variant == 'fid' else 1000
  model = inception.InceptionV3(num_classes=num_classes, variant=variant)
  return _convert(*_read(state_dict), model, (1, 299, 299, 3), lambda name: name,
                  f'InceptionV3 ({variant})')


def resnet_from_torch(state_dict: Source, depth: int, num_classes: int = 1000) -> dict:
  """Flax variables {'params', 'batch_stats'} for `resnet.ResNet(depth)` from torchvision's
  resnet18 / resnet34 / resnet50 weights (a dict of arrays or a file path)."""
  if depth not in (18, 34, 50):
    raise ValueError(f'ResNet depth must be 18, 34 or 50, not {depth}')
  # layer1_0 -> layer1.0, downsample_1 -> downsample.1 (torch's Sequential indices).
  rename = functools.partial(re.sub, r'(layer\d|downsample)_(\d+)', r'\1.\2')
  return _convert(*_read(state_dict), resnet.ResNet(depth=depth, num_classes=num_classes),
                  (1, 64, 64, 3), rename, f'ResNet-{depth}')


def dinov2_from_torch(state_dict: Source, size: str, image_size: int = 518) -> dict:
  """Flax variables {'params'} for `dinov2.Dinov2(size, image_size=image_size)`.

  Args:
    state_dict: the weights of transformers' Dinov2Model (facebook/dinov2-small/-base/-large
      model.safetensors or a torch state_dict, old or new attention names), as a dict of
      arrays or a file path. The facebookresearch torch-hub layout (blocks.N.attn.qkv) is not
      read.
    size: 's', 'b' or 'l'.
    image_size: the native input side the position embeddings belong to (518 for the
      published weights: 37 x 37 patches + CLS = 1370 positions).
  """
  if size not in dinov2.SIZES:
    raise ValueError(f'DINOv2 size must be one of {sorted(dinov2.SIZES)}, not {size!r}')
  rules = ((r'^patch_embeddings\.', 'embeddings.patch_embeddings.projection.'),
           (r'^(cls_token|position_embeddings)$', r'embeddings.\1'),
           (r'^layer_(\d+)\.', r'encoder.layer.\1.'),
           (r'\.(fc\d)\.', r'.mlp.\1.'))

  def rename(name):
    for pattern, repl in rules:
      name = re.sub(pattern, repl, name)
    return name

  state_dict, origin = _read(state_dict)
  return _convert(_modern_dinov2_names(state_dict), origin,
                  dinov2.Dinov2(size=size, image_size=image_size),
                  (1, dinov2.PATCH, dinov2.PATCH, 3), rename, f'DINOv2 ViT-{size.upper()}/14')


def t5_encoder_from_torch(state_dict: Source, config: t5.T5Config) -> dict:
  """Flax variables {'params'} for `t5.T5Encoder(config)` from the weights of transformers'
  T5EncoderModel or T5ForConditionalGeneration (the decoder's tensors are ignored), as a
  dict of arrays or a file path."""
  rules = ((r'^embed_tokens\.', 'shared.'),
           (r'^relative_attention_bias\.',
            'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.'),
           (r'^block_(\d+)_attention_norm\.', r'encoder.block.\1.layer.0.layer_norm.'),
           (r'^block_(\d+)_attention\.', r'encoder.block.\1.layer.0.SelfAttention.'),
           (r'^block_(\d+)_mlp_norm\.', r'encoder.block.\1.layer.1.layer_norm.'),
           (r'^block_(\d+)_mlp\.', r'encoder.block.\1.layer.1.DenseReluDense.'),
           (r'^final_layer_norm\.', 'encoder.final_layer_norm.'))

  def rename(name):
    for pattern, repl in rules:
      name = re.sub(pattern, repl, name)
    return name

  state_dict, origin = _read(state_dict)
  # Checkpoints that tie the embedding may keep it under the encoder's name only.
  if 'shared.weight' not in state_dict and 'encoder.embed_tokens.weight' in state_dict:
    state_dict = {**state_dict, 'shared.weight': state_dict['encoder.embed_tokens.weight']}
  return _convert(state_dict, origin, t5.T5Encoder(config), (1, 2), rename, 'T5 encoder',
                  input_dtype=jnp.int32)


def t5_encoder_from_folder(folder: str) -> tuple[t5.T5Config, dict]:
  """(config, Flax variables) of the T5 encoder in a local transformers checkpoint folder:
  config.json and model.safetensors, sharded safetensors (model.safetensors.index.json) or
  pytorch_model.bin. Nothing is downloaded."""
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{folder} has no config.json: not a transformers checkpoint folder')
  with open(config_path) as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{config_path} is not valid JSON ({e})') from None
  try:
    config = t5.T5Config.from_json(values)
  except TypeError as e:  # a required size is missing.
    raise ValueError(f'{config_path} is not a T5 config ({e})') from None
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = [name for name in ('model.safetensors', 'pytorch_model.bin')
             if os.path.isfile(os.path.join(folder, name))][:1]
  if not files:
    raise FileNotFoundError(f'{folder} has no model.safetensors, model.safetensors.index.json '
                            'or pytorch_model.bin')
  state_dict = {}
  for name in files:  # the decoder's tensors (half of FLAN-T5) are dropped as each file is read.
    state_dict.update({k: v for k, v in load_state_dict(os.path.join(folder, name)).items()
                       if k.startswith(('shared.', 'encoder.'))})
  return config, t5_encoder_from_torch(state_dict, config)


def _modern_dinov2_names(state_dict: StateDict) -> StateDict:
  renamed = {}
  for name, value in state_dict.items():
    for old, new in _DINOV2_LEGACY_NAMES:
      name = name.replace(old, new)
    renamed[name] = value
  return renamed


def _read(source: Source) -> tuple[StateDict, str]:
  """(state dict, how to name it in messages) from a state dict or a file path."""
  if isinstance(source, str):
    return load_state_dict(source), source
  if not isinstance(source, Mapping):
    raise ValueError(f'expected a state dict (name -> tensor) or a file path, got a '
                    f'{type(source).__name__}')
  return source, 'the state dict'


def _convert(state_dict: StateDict, origin: str, model, input_shape: tuple[int, ...],
             torch_name: Callable[[str], str], what: str, input_dtype=jnp.float32) -> dict:
  """Maps a state dict onto the variables `model` expects.

  Args:
    state_dict: name -> array.
    origin: the state dict's name in messages (its file path, say).
    model: the Flax module; its variables' shapes come from tracing init on an input of
      `input_shape` and `input_dtype` (images, or token ids).
    torch_name: dotted Flax module path + '.' + leaf -> dotted PyTorch name, before the
      leaf rename (e.g. 'layer1_0.conv1.kernel' -> 'layer1.0.conv1.kernel').
    what: the model's name for messages.
  """
  # DataParallel / DistributedDataParallel checkpoints prefix every name with 'module.'.
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct(input_shape, input_dtype))
  expected = traverse_util.flatten_dict(shapes)
  missing, misshaped, flat = [], [], {}
  # Weights before running stats, so that messages name the more telling tensors first.
  for path, leaf in sorted(expected.items(), key=lambda item: item[0][0] != 'params'):
    collection, *modules, name = path
    key = torch_name('.'.join(modules + [name]))
    key = key[:-len(name)] + _LEAF_NAMES.get(name, name)
    layout = _layout(name, len(leaf.shape))
    want = tuple(int(leaf.shape[i]) for i in np.argsort(layout)) if layout else leaf.shape
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict[key])
    if value.shape != want:
      misshaped.append(f'{key}: expected {want}, found {value.shape}')
      continue
    value = value.transpose(layout) if layout else value
    flat[(collection, *modules, name)] = value.astype(np.float32, copy=False)
  if missing:
    raise ValueError(
        f'{origin} lacks {len(missing)} of the {len(expected)} tensors {what} needs, e.g. '
        f'{", ".join(missing[:4])}; it has e.g. {", ".join(list(state_dict)[:4]) or "nothing"}. '
        f'Is it a checkpoint of another network, or truncated?')
  if misshaped:
    raise ValueError(f'{origin} has {len(misshaped)} tensors of the wrong shape for {what}: '
                    + '; '.join(misshaped[:4]))
  return traverse_util.unflatten_dict(flat)


def _layout(name: str, ndim: int) -> tuple[int, ...] | None:
  """Axis order taking a PyTorch weight to its Flax layout, or None when they agree."""
  if name != 'kernel':
    return None
  return (2, 3, 1, 0) if ndim == 4 else (1, 0)


def _short(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'[:200]
