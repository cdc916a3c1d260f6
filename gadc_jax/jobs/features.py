"""The features job: every image of a split through a network, into a FeatureStore.

For one network and one split, every image goes through the encoder and its classifier head;
the job stores, per image, the float32 features, the class probabilities (all, or the top k),
CE = -log p(y), the entropy and the max probability, with the example id, label and position
in the split (`gadc_jax.feature_store` has the layout); a network without a head (a DINOv2
encoder) gives features alone. Work is cut into shards of the split
(resumable: a finished shard is a file); hosts take disjoint shards; host 0 then consolidates
the shards into per-field .npy arrays sorted by class, and records their sizes and checksums
in the manifest. A finished store whose files no longer match that record is computed again;
a run holds the store's folder lock, so a second run on it refuses.
"""

import os
import shutil

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import feature_store
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import validation
from gadc_jax.data import input_pipeline


def _shard_path(out: str, k: int) -> str:
  return os.path.join(out, 'shards', f'shard-{k:05d}.npz')


def _compute_shard(config, forward, has_head: bool, split, start, end) -> dict[str, np.ndarray]:
  """Store fields for examples [start, end) of the split."""
  cfg = config.features
  parts = []
  for batch in input_pipeline.iterate_batches(config.data, split, cfg.batch_size, start, end):
    outputs = forward(batch['image'])  # (features, logits, ...); no logits without a head.
    features, logits = outputs[0], outputs[1] if has_head else None
    out = feature_store.per_image(features, logits, batch['label'], cfg.probs_topk)
    out['labels'] = batch['label'].astype(np.int32)
    out['ids'] = np.asarray(batch['id']).astype(str)
    parts.append(out)
  shard = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  shard['positions'] = np.arange(start, end, dtype=np.int64)
  if not np.all(np.isfinite(shard['features'])):
    row = int(np.argwhere(~np.isfinite(shard['features']))[0, 0])
    raise ValueError(
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
      'files': artifacts.describe_files(out, [f'{field}.npy' for field in fields]),
      'offsets': offsets.tolist(),
      'feature_dim': int(fields['features'][1][0]),
      'num_examples': int(len(order)),
      'probs_topk': inputs['probs_topk'],
      'num_model_classes': inputs['num_model_classes'],
  })
  shutil.rmtree(os.path.join(out, 'shards'))


def _finished(out: str, inputs: dict, expected: str) -> bool:
  """Whether `out` holds the finished store of `inputs`, its files whole and its own. A
  damaged store (a file missing, cut short or changed since written) loses its damaged files
  and its manifest, so that it is computed again."""
  manifest = os.path.join(out, 'manifest.json')
  started = os.path.join(out, 'shards', 'inputs.json')
  record = artifacts.finished_or_start(manifest, started, expected, inputs, 'features')
  if record is None:
    return False
  damaged = artifacts.damaged_files(out, record['files'])
  if not damaged:
    return True
  logging.warning('features %s is damaged (%s); computing it again', out,
                  '; '.join(f'{name} {problem}' for name, problem in damaged.items()))
  if jax.process_index() == 0:
    for name in [*damaged, 'manifest.json']:
      if os.path.exists(os.path.join(out, name)):
        os.remove(os.path.join(out, name))
  multihost_utils.sync_global_devices(f'features {out} damaged removed')
  artifacts.finished_or_start(manifest, started, expected, inputs, 'features')  # starts now.
  return False


def compute_store(config: ml_collections.ConfigDict, workdir: str, network: str,
                  split: str) -> feature_store.FeatureStore:
  """Computes (or resumes, or skips if finished) the store of one network on one split."""
  out = layout.features_dir(workdir, network, split)
  inputs = feature_store.expected_inputs(config, workdir, network, split)
  expected = artifacts.fingerprint(inputs)
  with artifacts.exclusive(out):
    if _finished(out, inputs, expected):
      logging.info('features %s already complete; skipping.', out)
    else:
      _compute(config, workdir, network, split, out, inputs, expected)
  return feature_store.FeatureStore(out)


def _compute(config: ml_collections.ConfigDict, workdir: str, network: str, split: str,
             out: str, inputs: dict, expected: str) -> None:
  """The shards this host has left, then (host 0) the consolidated store in `out`."""
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
      shard = _compute_shard(config, forward, inputs['num_model_classes'] > 0, split, start,
                             end)
      artifacts.atomic_write_npz(_shard_path(out, k), **shard)
      if preemption.requested():  # shards are the unit of resumption: stop between them.
        break
  preemption.raise_if_agreed(f'in the features job, {out}')
  multihost_utils.sync_global_devices(f'features {out} shards')
  if jax.process_index() == 0:
    _consolidate(out, num_shards, inputs, expected)
  multihost_utils.sync_global_devices(f'features {out} consolidated')


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Every option of the features job, checked before any work (one line each)."""
  cfg = config.features
  validation.require(cfg, 'config.features', positive_ints=('batch_size', 'shard_size'),
                     non_negative_ints=('probs_topk',))
  networks.check_use(config, 'config.features.networks', cfg.networks,
                     [('config.features.splits', split) for split in cfg.splits])


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  _check_config(config)
  for network in config.features.networks:
    for split in config.features.splits:
      store = compute_store(config, workdir, network, split)
      logging.info('features %s: %d images, %d classes, %d-d', store.path,
                   store.manifest['num_examples'], store.num_classes,
                   store.manifest['feature_dim'])
