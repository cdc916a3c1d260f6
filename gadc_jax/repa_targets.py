"""REPA's targets: an encoder's patch tokens for exactly the images a diffusion run trains on.

Written by the repa_targets job, read by the train job, at layout.repa_targets_dir (beside
the selection the run trains on):

    repa-NETWORK/
      inputs.json              what the targets are made from (checked on resume)
      tokens-00000.npy ...     float16 [n, T, W]: the patch tokens of images
                               k * shard_size ... of the run's images, in the order of
                               training_positions (a selection's class order)
      manifest.json            fingerprint, inputs, shape, size and checksum of each shard;
                               written last (the "complete" mark)

float16 halves what float32 would take (10K DINOv2-B images at 224 px: 3.9 GB, not 7.9 GB);
the train job widens them to float32 batch by batch. The fingerprint covers the images (the
selection's fingerprint), the network's settings and checkpoint and the shard size, so
targets of another selection or network are refused, never trained on.
"""

import os
from typing import Any

import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax.training import dataset as dataset_lib


def shard_name(k: int) -> str:
  return f'tokens-{k:05d}.npy'


def expected_inputs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What the targets of config.train's images under network config.train.repa.features
  depend on."""
  network = config.train.repa.features
  positions, _, description = dataset_lib.training_positions(config, workdir)
  record = networks.network_record(config, workdir, network)
  return {
      'images': description,
      'num_images': int(len(positions)),
      'image_size': config.data.image_size,
      'network': network,
      'network_settings': networks.settings(config.networks[network]),
      'arch': record['arch'],
      'checkpoint': record['params_fingerprint'],
      'shard_size': config.repa_targets.shard_size,
  }


class RepaTargets:
  """A finished targets folder (see the module docstring); a ValueError naming the file
  when a shard is missing or of another size than written."""

  def __init__(self, path: str):
    manifest_path = os.path.join(path, 'manifest.json')
    if not os.path.exists(manifest_path):
      raise FileNotFoundError(f'no finished REPA targets in {path}; run the repa_targets job '
                              'for this training run first')
    self.path = path
    self.manifest = artifacts.read_json(manifest_path)
    # Sizes only: a checksum of every shard would read gigabytes on each open.
    artifacts.verify_files(path, self.manifest['files'], 'REPA targets', checksums=False)

  @property
  def fingerprint(self) -> str:
    return self.manifest['fingerprint']

  def load(self) -> np.ndarray:
    """The targets [N, T, W] float16, in the order of the run's images."""
    return np.concatenate([np.load(os.path.join(self.path, name))
                           for name in sorted(self.manifest['files'])])


def open_targets(config: ml_collections.ConfigDict, workdir: str) -> RepaTargets:
  """The finished targets of config.train's images, checked against the current selection,
  network and checkpoint."""
  targets = RepaTargets(layout.repa_targets_dir(workdir, config))
  expected = artifacts.fingerprint(expected_inputs(config, workdir))
  artifacts.check_fingerprint(targets.path, expected, targets.fingerprint, 'REPA targets')
  return targets
