"""Named networks of `config.networks`: trained here, or converted from a local checkpoint.

A network's config has `arch` (an encoders name) and either `seed` (trained by the
train_classifier job into WORKDIR/classifiers/NAME) or `checkpoint` (a local PyTorch /
safetensors file of published weights, converted on load); optionally `input_size` (images are
resized to it, bilinearly, e.g. 299 for Inception) and `bfloat16`; every other key is an
argument of the module. Every network maps uint8 images to (features, logits[, extra]).
"""

import functools
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import batching
from gadc_jax import encoders
from gadc_jax import layout
from gadc_jax.data import input_pipeline
from gadc_jax.encoders import convert
from gadc_jax.training import checkpoints

_NOT_MODULE_ARGS = ('arch', 'seed', 'checkpoint', 'input_size', 'bfloat16')

# arch -> (classes of the published head, converter(path) -> variables).
_PRETRAINED = {
    'inception_v3_fid': (1008, lambda c, p: c.inception_from_torch(p, 'fid')),
    'inception_v3': (1000, lambda c, p: c.inception_from_torch(p, 'torchvision')),
    'resnet18': (1000, lambda c, p: c.resnet_from_torch(p, 18)),
    'resnet34': (1000, lambda c, p: c.resnet_from_torch(p, 34)),
    'resnet50': (1000, lambda c, p: c.resnet_from_torch(p, 50)),
    'dinov2_s14': (0, lambda c, p: c.dinov2_from_torch(p, 's')),
    'dinov2_b14': (0, lambda c, p: c.dinov2_from_torch(p, 'b')),
    'dinov2_l14': (0, lambda c, p: c.dinov2_from_torch(p, 'l')),
}


def to_unit_range(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 images [..., H, W, C] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def input_spec(net_cfg: ml_collections.ConfigDict) -> tuple[int, bool]:
  """(input_size or 0, whether to make grey images RGB): how a network wants its images."""
  return int(net_cfg.get('input_size', 0)), bool(net_cfg.get('checkpoint'))


def preprocess(images: jnp.ndarray, spec: tuple[int, bool]) -> jnp.ndarray:
  """uint8 [B, H, W, C] -> the network's input: [-1, 1], resized to input_size, RGB."""
  size, rgb = spec
  x = to_unit_range(images)
  if size and x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'bilinear')
  if rgb and x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)  # ImageNet networks want three channels.
  return x


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'prepare'))
def _forward(variables, images, *, model, spec, prepare):
  outputs = model.apply(variables, preprocess(images, spec) if prepare is None else
                        prepare(images))
  return tuple(o.reshape(o.shape[0], -1).astype(jnp.float32) if o.ndim != 3 else
               o.astype(jnp.float32) for o in outputs if o is not None)


def make_forward(model, variables, net_cfg: ml_collections.ConfigDict, batch_size: int,
                 prepare: Callable[[jnp.ndarray], jnp.ndarray] | None = None):
  """forward(images uint8 [b <= batch_size, H, W, C]) -> the module's outputs as float32
  numpy arrays (features [b, D], logits [b, K], and any extra output), jitted once: every
  batch is padded to one size and sharded over this host's devices.

  `prepare` maps the uint8 images to the module's input inside the jitted call; by default
  the network's own `preprocess` (the evaluate job passes ADM's Inception input instead).
  """
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  size = batching.round_up(batch_size, mesh.size)
  spec = input_spec(net_cfg)

  def forward(images: np.ndarray) -> tuple[np.ndarray, ...]:
    outputs = batching.padded_call(
        lambda x: _forward(variables, x, model=model, spec=spec, prepare=prepare), images, size,
        sharding)
    return tuple(np.asarray(o) for o in outputs)

  return forward


def pretrained_num_classes(arch: str) -> int:
  """The classes of the head of `arch`'s published weights (0: none)."""
  return _PRETRAINED[arch][0]


def init_params(model, seed: int, image_shape):
  """A classifier's initial variables for uint8-derived inputs of shape (H, W, C)."""
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape)))


def module_kwargs(net_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  kwargs = {k: v for k, v in net_cfg.items() if k not in _NOT_MODULE_ARGS}
  if net_cfg.get('bfloat16'):
    kwargs['dtype'] = jnp.bfloat16
  return kwargs


def _net_cfg(config, name: str) -> ml_collections.ConfigDict:
  check_use(config, 'the config', (name,))
  return config.networks[name]


def check_use(config, key: str, names: Iterable[str],
              splits: Iterable[tuple[str, str]] = ()) -> None:
  """Checks before any work that the networks `names` (config key `key`) are in
  config.networks and that each (config key, split) of `splits` is a split of the dataset:
  a ValueError naming the key otherwise."""
  for name in names:
    if name not in config.networks:
      raise ValueError(f'{key} names network {name!r}, which config.networks does not have '
                       f'(it has: {", ".join(config.networks)})')
  for split_key, split in splits:
    try:
      input_pipeline.split_info(config.data, split)
    except ValueError as e:
      raise ValueError(f'{split_key}: {e}') from None


def settings(net_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What of a network's config its outputs depend on, as JSON: all of it but the path of
  a checkpoint (its content is fingerprinted instead, so moving the file changes nothing)."""
  return json.loads(json.dumps({k: v for k, v in net_cfg.to_dict().items()
                                if k != 'checkpoint'}))


def _check_trained_with(name: str, record_path: str, trained: dict, current: dict) -> None:
  """A ValueError naming what differs when a classifier was trained with other settings
  than config.networks now has: its params are not the network the config describes."""
  if trained == current:
    return
  changed = ', '.join(f'{k} {trained.get(k)!r} -> {current.get(k)!r}'
                      for k in sorted(set(trained) | set(current))
                      if trained.get(k) != current.get(k))
  raise ValueError(
      f'network {name!r}: {record_path} was trained with other settings ({changed}); run '
      f'train_classifier in a new --workdir, or remove {os.path.dirname(record_path)} to '
      'retrain it here')


def network_record(config, workdir: str, name: str) -> dict[str, Any]:
  """What later artifacts depend on: arch, head width and a fingerprint of the weights."""
  net_cfg = _net_cfg(config, name)
  if net_cfg.arch in _PRETRAINED and not net_cfg.get('checkpoint'):
    raise ValueError(
        f'network {name!r} ({net_cfg.arch}) needs published weights: set '
        f'--config.networks.{name}.checkpoint to a local checkpoint file')
  if net_cfg.get('checkpoint'):
    path = os.path.expanduser(net_cfg.checkpoint)
    if net_cfg.arch not in _PRETRAINED:
      raise ValueError(f'network {name!r}: no converter for arch {net_cfg.arch!r}; '
                                f'known: {", ".join(_PRETRAINED)}')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'network {name!r}: checkpoint {path} does not exist')
    return {'arch': net_cfg.arch, 'num_classes': pretrained_num_classes(net_cfg.arch),
            'params_fingerprint': artifacts.file_fingerprint(path)}
  record_path = os.path.join(layout.classifier_dir(workdir, name), 'classifier.json')
  if not os.path.exists(record_path):
    raise FileNotFoundError(
        f'no trained classifier {name!r} at {record_path}; run the train_classifier job first')
  record = artifacts.read_json(record_path)
  _check_trained_with(name, record_path, record['inputs']['network'], settings(net_cfg))
  return record


def load_network(config, workdir: str, name: str):
  """(module, variables, record) of network `name` of config.networks."""
  net_cfg = _net_cfg(config, name)
  record = network_record(config, workdir, name)
  module = encoders.build(net_cfg.arch, record['num_classes'], **module_kwargs(net_cfg))
  if net_cfg.get('checkpoint'):
    return module, _PRETRAINED[net_cfg.arch][1](convert, os.path.expanduser(
        net_cfg.checkpoint)), record
  return module, _restore_trained(config, workdir, name, module, record), record


def _restore_trained(config, workdir: str, name: str, module, record: dict):
  """The params of network `name` trained by the train_classifier job (params alone, no
  optimizer state), checked against its record's fingerprint."""
  image_shape = input_pipeline.split_info(config.data, config.classifier.train_split).image_shape
  abstract = jax.eval_shape(lambda: init_params(module, 0, image_shape))
  folder = os.path.join(layout.classifier_dir(workdir, name), 'checkpoints')
  params = checkpoints.Checkpointer(folder).restore_field('params', abstract, record['step'])
  artifacts.check_fingerprint(folder, record['params_fingerprint'],
                              artifacts.array_fingerprint(params), 'params')
  return params
