"""The features job, and the FeatureStore it writes.

For one network and one split, every image goes through the encoder and its classifier head;
the job stores, per image, the float32 features, the class probabilities (all, or the top k),
CE = -log p(y), the entropy and the max probability, with the example id, label and position
in the split. Work is cut into shards of the split (resumable: a finished shard is a file);
hosts take disjoint shards; host 0 then consolidates the shards into per-field .npy arrays
sorted by class, so that class c is the contiguous row range offsets[c]:offsets[c+1] and can
be memory-mapped at ImageNet scale.

    WORKDIR/features/NETWORK-SPLIT/
      manifest.json          inputs, fingerprint, offsets; written last (the "complete" mark)
      features.npy [N, D]    float32
      probs.npy [N, K]       float32 (or topk_probs.npy / topk_classes.npy [N, k])
      ce.npy, entropy.npy, maxprob.npy [N] float32
      labels.npy [N] int32, positions.npy [N] int64, ids.npy [N] str
"""

import os
import shutil
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import scipy.special
import tqdm

from gadc_jax import artifacts
from gadc_jax import networks
from gadc_jax.data import input_pipeline

_PER_IMAGE = ('ce', 'entropy', 'maxprob', 'labels', 'positions', 'ids')


def store_dir(workdir: str, network: str, split: str) -> str:
  return os.path.join(workdir, 'features', f'{network}-{split}')


class FeatureStore:
  """Read access to a finished features directory (see the module docstring)."""

  def __init__(self, path: str):
    manifest_path = os.path.join(path, 'manifest.json')
    if not os.path.exists(manifest_path):
      raise artifacts.UserError(
          f'no finished features in {path}; run the features job for it first')
    self.path = path
    self.manifest = artifacts.read_json(manifest_path)
    self.offsets = np.asarray(self.manifest['offsets'], np.int64)

  @property
  def fingerprint(self) -> str:
    return self.manifest['fingerprint']

  @property
  def num_classes(self) -> int:
    return len(self.offsets) - 1

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


def per_image(features: np.ndarray, logits: np.ndarray, labels: np.ndarray,
              topk: int) -> dict[str, np.ndarray]:
  """What the store keeps of one batch: features, probabilities (or their top k), CE,
  entropy and max probability, from the network's features [b, D] and logits [b, K]."""
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
  """What a store's content depends on: dataset, preprocessing, checkpoint, options."""
  info = input_pipeline.split_info(config.data, split)
  record = networks.network_record(config, workdir, network)
  return {
      'dataset': [info.dataset, info.version, info.split, info.num_examples],
      'image_size': config.data.image_size,
      'network': network,
      'input_spec': list(networks.input_spec(config.networks[network])),
      'arch': record['arch'],
      'num_model_classes': record['num_classes'],
      'checkpoint': record['params_fingerprint'],
      'probs_topk': config.features.probs_topk,
  }


def open_store(config, workdir: str, network: str, split: str) -> FeatureStore:
  """The finished store of (network, split), checked against the current checkpoint/config."""
  store = FeatureStore(store_dir(workdir, network, split))
  expected = artifacts.fingerprint(expected_inputs(config, workdir, network, split))
  artifacts.check_fingerprint(store.path, expected, store.fingerprint, 'features')
  return store


def _shard_path(out: str, k: int) -> str:
  return os.path.join(out, 'shards', f'shard-{k:05d}.npz')


def _compute_shard(config, forward, split, start, end) -> dict[str, np.ndarray]:
  """Store fields for examples [start, end) of the split."""
  cfg = config.features
  parts = []
  for batch in input_pipeline.iterate_batches(config.data, split, cfg.batch_size, start, end):
    features, logits = forward(batch['image'])[:2]
    out = per_image(features, logits, batch['label'], cfg.probs_topk)
    out['labels'] = batch['label'].astype(np.int32)
    out['ids'] = np.asarray(batch['id']).astype(str)
    parts.append(out)
  shard = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  shard['positions'] = np.arange(start, end, dtype=np.int64)
  if not np.all(np.isfinite(shard['features'])):
    row = int(np.argwhere(~np.isfinite(shard['features']))[0, 0])
    raise artifacts.UserError(
        f'non-finite features for example {shard["ids"][row]} (position {start + row}) of '
        f'split {split}; check the checkpoint and the images')
  return shard


def _consolidate(out: str, num_shards: int, inputs: dict, expected: str) -> None:
  """Merges shard files into class-sorted .npy arrays, then writes the manifest."""
  shard_files = [_shard_path(out, k) for k in range(num_shards)]
  keys = [(np.load(f)['labels'], np.load(f)['positions']) for f in shard_files]
  labels = np.concatenate([k[0] for k in keys])
  positions = np.concatenate([k[1] for k in keys])
  order = np.lexsort((positions, labels))  # by class, then position in the split.
  dest = np.empty_like(order)
  dest[order] = np.arange(len(order))  # row of example i (concatenated order) in the output.
  with np.load(shard_files[0]) as first:
    fields = {k: (first[k].dtype, first[k].shape[1:]) for k in first.files}
  for field, (dtype, tail) in fields.items():
    final = os.path.join(out, f'{field}.npy')
    with artifacts.atomic_path(final) as tmp:
      if dtype.kind == 'U':  # strings: small enough to gather in memory, no memmap for them.
        array = np.concatenate([np.load(f)[field] for f in shard_files])[order]
        np.save(tmp, array)
        continue
      array = np.lib.format.open_memmap(tmp, mode='w+', dtype=dtype, shape=(len(order),) + tail)
      row = 0
      for f in shard_files:
        part = np.load(f)[field]
        array[dest[row:row + len(part)]] = part
        row += len(part)
      array.flush()
      del array
  num_classes = int(labels.max()) + 1 if len(labels) else 0
  offsets = np.searchsorted(labels[order], np.arange(num_classes + 1))
  artifacts.atomic_write_json(os.path.join(out, 'manifest.json'), {
      'fingerprint': expected,
      'inputs': inputs,
      'offsets': offsets.tolist(),
      'feature_dim': int(fields['features'][1][0]),
      'num_examples': int(len(order)),
      'probs_topk': inputs['probs_topk'],
      'num_model_classes': inputs['num_model_classes'],
  })
  shutil.rmtree(os.path.join(out, 'shards'))


def compute_store(config: ml_collections.ConfigDict, workdir: str, network: str,
                  split: str) -> FeatureStore:
  """Computes (or resumes, or skips if finished) the store of one network on one split."""
  out = store_dir(workdir, network, split)
  inputs = expected_inputs(config, workdir, network, split)
  expected = artifacts.fingerprint(inputs)
  if artifacts.finished_or_start(os.path.join(out, 'manifest.json'),
                                 os.path.join(out, 'shards', 'inputs.json'), expected, inputs,
                                 'features') is not None:
    logging.info('features %s already complete; skipping.', out)
    return FeatureStore(out)

  num_examples = inputs['dataset'][3]
  shard_size = config.features.shard_size
  num_shards = max(1, -(-num_examples // shard_size))
  mine = [k for k in range(num_shards) if k % jax.process_count() == jax.process_index()]
  todo = [k for k in mine if not os.path.exists(_shard_path(out, k))]
  logging.info('features %s: %d shards, %d left on this host', out, len(mine), len(todo))
  if todo:
    model, variables, _ = networks.load_network(config, workdir, network)
    forward = networks.make_forward(model, variables, config.networks[network],
                                    config.features.batch_size)
    for k in tqdm.tqdm(todo, desc=f'features {network}/{split}', unit='shard'):
      start, end = k * shard_size, min((k + 1) * shard_size, num_examples)
      shard = _compute_shard(config, forward, split, start, end)
      artifacts.atomic_write_npz(_shard_path(out, k), **shard)
  multihost_utils.sync_global_devices(f'features {out} shards')
  if jax.process_index() == 0:
    _consolidate(out, num_shards, inputs, expected)
  multihost_utils.sync_global_devices(f'features {out} consolidated')
  return FeatureStore(out)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  for network in config.features.networks:
    for split in config.features.splits:
      store = compute_store(config, workdir, network, split)
      logging.info('features %s: %d images, %d classes, %d-d', store.path,
                   store.manifest['num_examples'], store.num_classes,
                   store.manifest['feature_dim'])
