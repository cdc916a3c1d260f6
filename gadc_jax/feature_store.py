"""The FeatureStore: per-image features and classifier outputs of one network on one split.

Written by the features job, read by the select job (and anything that needs features):

    WORKDIR/features/NETWORK-SPLIT/
      manifest.json          inputs, fingerprint, offsets, size and checksum of each .npy;
                             written last (the "complete" mark)
      features.npy [N, D]    float32
      probs.npy [N, K]       float32 (or topk_probs.npy / topk_classes.npy [N, k])
      ce.npy, entropy.npy, maxprob.npy [N] float32
      labels.npy [N] int32, positions.npy [N] int64, ids.npy [N] str

A network without a classifier head (num_model_classes 0, e.g. a DINOv2 encoder: an
evaluation space) stores no probs, ce, entropy or maxprob.

Rows are sorted by class, then position in the split, so that class c is the contiguous row
range offsets[c]:offsets[c+1] and can be memory-mapped at ImageNet scale. Opening a store
checks the size of each file against the manifest (reading every byte for a checksum would
cost minutes at ImageNet scale on every open; the features job checks the checksums).
"""

import os
from typing import Any

import ml_collections
import numpy as np
import scipy.special

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax.data import input_pipeline


class FeatureStore:
  """Read access to a finished features directory (see the module docstring); a ValueError
  naming the file when one is missing or of another size than written."""

  def __init__(self, path: str):
    manifest_path = os.path.join(path, 'manifest.json')
    if not os.path.exists(manifest_path):
      raise FileNotFoundError(
          f'no finished features in {path}; run the features job for it first')
    self.path = path
    self.manifest = artifacts.read_json(manifest_path)
    if 'files' not in self.manifest:
      raise ValueError(f'{manifest_path} records no sizes of its files (an older version wrote '
                       'it); remove the folder and run the features job again')
    artifacts.verify_files(path, self.manifest['files'], 'features', checksums=False)
    self.offsets = np.asarray(self.manifest['offsets'], np.int64)

  @property
  def fingerprint(self) -> str:
    return self.manifest['fingerprint']

  @property
  def num_classes(self) -> int:
    return len(self.offsets) - 1

  @property
  def has_head(self) -> bool:
    """Whether the network has a classifier head, hence probs, ce, entropy and maxprob."""
    return self.manifest['num_model_classes'] > 0

  def class_sizes(self) -> np.ndarray:
    return np.diff(self.offsets)

  def load(self, field: str, c: int | None = None) -> np.ndarray:
    """Field `field` for class c (or every image when c is None), memory-mapped."""
    array = np.load(os.path.join(self.path, f'{field}.npy'), mmap_mode='r')
    return array if c is None else array[self.offsets[c]:self.offsets[c + 1]]

  def probs(self, c: int) -> np.ndarray:
    """Class probabilities [n_c, K] of class c; dense again when only the top k were kept."""
    if not self.manifest['probs_topk']:
      return np.asarray(self.load('probs', c))
    values, classes = self.load('topk_probs', c), self.load('topk_classes', c)
    dense = np.zeros((len(values), self.manifest['num_model_classes']), np.float32)
    np.put_along_axis(dense, np.asarray(classes), np.asarray(values), axis=1)
    return dense


def per_image(features: np.ndarray, logits: np.ndarray | None, labels: np.ndarray,
              topk: int) -> dict[str, np.ndarray]:
  """What the store keeps of one batch: features, probabilities (or their top k), CE,
  entropy and max probability, from the network's features [b, D] and logits [b, K]; the
  features alone when logits is None (no classifier head)."""
  if logits is None:
    return {'features': features.astype(np.float32)}
  logits = logits.astype(np.float64)
  log_probs = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  probs = np.exp(log_probs)
  out = {
      'features': features.astype(np.float32),
      'ce': -log_probs[np.arange(len(labels)), labels].astype(np.float32),
      'entropy': -np.sum(probs * log_probs, axis=1).astype(np.float32),
      'maxprob': probs.max(axis=1).astype(np.float32),
  }
  if topk:
    top = np.argsort(-probs, axis=1, kind='stable')[:, :topk]
    out['topk_probs'] = np.take_along_axis(probs, top, 1).astype(np.float32)
    out['topk_classes'] = top.astype(np.int32)
  else:
    out['probs'] = probs.astype(np.float32)
  return out


def expected_inputs(config: ml_collections.ConfigDict, workdir: str, network: str,
                    split: str) -> dict[str, Any]:
  """What a store's content depends on: dataset, preprocessing, the network's settings and
  checkpoint, options."""
  info = input_pipeline.split_info(config.data, split)
  record = networks.network_record(config, workdir, network)
  return {
      'dataset': [info.dataset, info.version, info.split, info.num_examples],
      'image_size': config.data.image_size,
      'network': network,
      'network_settings': networks.settings(config.networks[network]),
      'input_spec': list(networks.input_spec(config.networks[network])),
      'arch': record['arch'],
      'num_model_classes': record['num_classes'],
      'checkpoint': record['params_fingerprint'],
      'probs_topk': config.features.probs_topk,
  }


def open_store(config, workdir: str, network: str, split: str) -> FeatureStore:
  """The finished store of (network, split), checked against the current checkpoint/config."""
  store = FeatureStore(layout.features_dir(workdir, network, split))
  expected = artifacts.fingerprint(expected_inputs(config, workdir, network, split))
  artifacts.check_fingerprint(store.path, expected, store.fingerprint, 'features')
  return store
