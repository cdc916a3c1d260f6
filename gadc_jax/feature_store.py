"""The FeatureStore: per-image features and classifier outputs of one network on one split.

Written by the features job, read by the select job (and anything that needs features).
`build` is the sharded, resumable writer of such a store, whatever its per-image fields
(the difficulty job writes D2C's difficulty scores with it):

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
import shutil
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import scipy.special
import tqdm

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax.data import input_pipeline

# compute_shard(start, end) -> the store's fields of examples [start, end) of the split,
# each [end - start, ...], with 'labels' [b] int32, 'ids' [b] str and 'positions' [b] int64.
ShardFn = Callable[[int, int], dict[str, np.ndarray]]


class FeatureStore:
  """Read access to a finished store (see the module docstring); a ValueError naming the
  file when one is missing or of another size than written. `what` is the job that writes
  it (features, difficulty)."""

  def __init__(self, path: str, what: str = 'features'):
    manifest_path = os.path.join(path, 'manifest.json')
    if not os.path.exists(manifest_path):
      raise FileNotFoundError(
          f'no finished {what} in {path}; run the {what} job for it first')
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


def shard_path(out: str, k: int) -> str:
  return os.path.join(out, 'shards', f'shard-{k:05d}.npz')


def _consolidate(out: str, num_shards: int, inputs: dict, expected: str,
                 describe: Callable[[dict], dict]) -> None:
  """Merges shard files into class-sorted .npy arrays, then writes the manifest."""
  shard_files = [shard_path(out, k) for k in range(num_shards)]
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
      'num_examples': int(len(order)),
      **describe(fields),
  })
  shutil.rmtree(os.path.join(out, 'shards'))


def _finished(out: str, inputs: dict, expected: str, what: str) -> bool:
  """Whether `out` holds the finished store of `inputs`, its files whole and its own. A
  damaged store (a file missing, cut short or changed since written) loses its damaged files
  and its manifest, so that it is computed again."""
  manifest = os.path.join(out, 'manifest.json')
  started = os.path.join(out, 'shards', 'inputs.json')
  record = artifacts.finished_or_start(manifest, started, expected, inputs, what)
  if record is None:
    return False
  damaged = artifacts.damaged_on_rerun(out, record['files'], what)
  if not damaged:
    return True
  artifacts.remove_files(out, [*damaged, 'manifest.json'])
  artifacts.finished_or_start(manifest, started, expected, inputs, what)  # starts now.
  return False


def build(out: str, inputs: dict, what: str, shard_size: int,
          make_shard_fn: Callable[[], ShardFn],
          describe: Callable[[dict], dict] = lambda fields: {}) -> FeatureStore:
  """Computes (or resumes, or skips if finished) the store of `inputs` in `out`.

  The split's inputs['dataset'][3] examples are cut into shards of `shard_size` (a finished
  shard is a file: the unit of resumption, and of a SIGTERM stop); hosts take disjoint
  shards; host 0 then consolidates them into class-sorted .npy arrays and writes the
  manifest, with the sizes and checksums of the files and `describe({field: (dtype, shape
  of a row)})`. `make_shard_fn` (loading a network, say) is called only when shards are
  left. A run holds the folder's lock; `what` names the store in messages.
  """
  expected = artifacts.fingerprint(inputs)
  with artifacts.exclusive(out):
    if _finished(out, inputs, expected, what):
      logging.info('%s %s already complete; skipping.', what, out)
      return FeatureStore(out, what)
    num_examples = inputs['dataset'][3]
    num_shards = max(1, -(-num_examples // shard_size))
    mine = [k for k in range(num_shards) if k % jax.process_count() == jax.process_index()]
    todo = [k for k in mine if not os.path.exists(shard_path(out, k))]
    logging.info('%s %s: %d shards, %d left on this host', what, out, len(mine), len(todo))
    if todo:
      compute_shard = make_shard_fn()
      for k in tqdm.tqdm(todo, desc=f'{what} {os.path.basename(out)}', unit='shard'):
        shard = compute_shard(k * shard_size, min((k + 1) * shard_size, num_examples))
        artifacts.atomic_write_npz(shard_path(out, k), **shard)
        if preemption.requested():  # shards are the unit of resumption: stop between them.
          break
    preemption.raise_if_agreed(f'in the {what} job, {out}')
    multihost_utils.sync_global_devices(f'{what} {out} shards')
    if jax.process_index() == 0:
      _consolidate(out, num_shards, inputs, expected, describe)
    multihost_utils.sync_global_devices(f'{what} {out} consolidated')
  return FeatureStore(out, what)
