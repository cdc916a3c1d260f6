"""The repa_targets job: REPA's patch tokens for the images config.train trains on.

Runs the images of the run's selection (or whole split) through network
config.train.repa.features (e.g. DINOv2-B at 224 px with `with_patch_tokens`) and stores
their patch tokens as float16 shards beside the selection (`gadc_jax.repa_targets` has the
layout); only those images are read, not the split. Shards are the unit of resumption
(a finished one is a file, hosts take disjoint ones); host 0 then writes the manifest. A
finished folder is skipped; damaged shards are computed again; targets made for another
selection or network are refused.
"""

import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import repa_targets
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.training import dataset as dataset_lib


def _check_config(config: ml_collections.ConfigDict) -> None:
  validation.require(config.repa_targets, 'config.repa_targets',
                     positive_ints=('batch_size', 'shard_size'))
  if not config.train.repa.features:
    raise ValueError('config.train.repa.features is not set: name the network of '
                     'config.networks whose patch tokens REPA aligns to')
  networks.check_use(config, 'config.train.repa.features', [config.train.repa.features])


def _patch_tokens(config, forward, positions: np.ndarray) -> np.ndarray:
  """float16 [n, T, W] patch tokens of the images at `positions` of config.train.split."""
  cfg = config.repa_targets
  parts = []
  for i in range(0, len(positions), cfg.batch_size):
    images = input_pipeline.read_examples(config.data, config.train.split,
                                          positions[i:i + cfg.batch_size])['image']
    tokens = forward(images)[-1]
    if tokens.ndim != 3:
      raise ValueError(f'network {config.train.repa.features!r} returns no patch tokens '
                       f'[b, T, W] (its last output has shape {tokens.shape}); set its '
                       'with_patch_tokens=True')
    parts.append(tokens.astype(np.float16))
  return np.concatenate(parts)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  _check_config(config)
  out = layout.repa_targets_dir(workdir, config)
  inputs = repa_targets.expected_inputs(config, workdir)
  expected = artifacts.fingerprint(inputs)
  manifest_path = os.path.join(out, 'manifest.json')
  with artifacts.exclusive(out):
    record = artifacts.finished_or_start(manifest_path, os.path.join(out, 'inputs.json'),
                                         expected, inputs, 'REPA targets')
    if record is not None:
      damaged = artifacts.damaged_on_rerun(out, record['files'], 'REPA targets')
      if not damaged:
        return record
      artifacts.remove_files(out, [*damaged, 'manifest.json'])
    return _compute(config, workdir, out, inputs, expected)


def _compute(config, workdir: str, out: str, inputs: dict, expected: str) -> dict:
  """The shards this host has left, then (host 0) the manifest."""
  positions, _, _ = dataset_lib.training_positions(config, workdir)
  size = config.repa_targets.shard_size
  num_shards = max(1, -(-len(positions) // size))
  names = [repa_targets.shard_name(k) for k in range(num_shards)]
  mine = [k for k in range(num_shards) if k % jax.process_count() == jax.process_index()]
  todo = [k for k in mine if not os.path.exists(os.path.join(out, names[k]))]
  logging.info('REPA targets %s: %d shards, %d left on this host', out, len(mine), len(todo))
  if todo:
    network = config.train.repa.features
    model, variables, _ = networks.load_network(config, workdir, network)
    forward = networks.make_forward(model, variables, config.networks[network],
                                    config.repa_targets.batch_size)
    for k in tqdm.tqdm(todo, desc=f'REPA targets {network}', unit='shard'):
      tokens = _patch_tokens(config, forward, positions[k * size:(k + 1) * size])
      artifacts.atomic_write_npy(os.path.join(out, names[k]), tokens)
      if preemption.requested():  # shards are the unit of resumption: stop between them.
        break
  preemption.raise_if_agreed(f'in the repa_targets job, {out}')
  multihost_utils.sync_global_devices(f'repa targets {out} shards')
  first = np.load(os.path.join(out, names[0]), mmap_mode='r')
  record = {'fingerprint': expected, 'inputs': inputs,
            'shape': [len(positions), *first.shape[1:]], 'dtype': 'float16'}
  if jax.process_index() == 0:
    record['files'] = artifacts.describe_files(out, names)
    artifacts.atomic_write_json(os.path.join(out, 'manifest.json'), record)
  multihost_utils.sync_global_devices(f'repa targets {out} finished')
  logging.info('REPA targets %s: %s float16', out, record['shape'])
  return record
