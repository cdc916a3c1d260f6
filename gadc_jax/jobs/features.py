"""The features job: every image of a split through a network, into a FeatureStore.

For one network and one split, every image goes through the encoder and its classifier head;
the job stores, per image, the float32 features, the class probabilities (all, or the top k),
CE = -log p(y), the entropy and the max probability, with the example id, label and position
in the split (`gadc_jax.feature_store` has the layout and the writer); a network without a
head (a DINOv2 encoder) gives features alone. Work is cut into shards
(resumable: a finished shard is a file); hosts take disjoint shards; host 0 then consolidates
the shards into per-field .npy arrays sorted by class, and records their sizes and checksums
in the manifest. A finished store whose files no longer match that record is computed again;
a run holds the store's folder lock, so a second run on it refuses.
"""

from absl import logging
import ml_collections
import numpy as np

from gadc_jax import feature_store
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import validation
from gadc_jax.data import input_pipeline


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


def compute_store(config: ml_collections.ConfigDict, workdir: str, network: str,
                  split: str) -> feature_store.FeatureStore:
  """Computes (or resumes, or skips if finished) the store of one network on one split."""
  inputs = feature_store.expected_inputs(config, workdir, network, split)

  def make_shard_fn():
    model, variables, _ = networks.load_network(config, workdir, network)
    forward = networks.make_forward(model, variables, config.networks[network],
                                    config.features.batch_size)
    has_head = inputs['num_model_classes'] > 0
    return lambda start, end: _compute_shard(config, forward, has_head, split, start, end)

  def describe(fields):
    return {'feature_dim': int(fields['features'][1][0]),
            'probs_topk': inputs['probs_topk'],
            'num_model_classes': inputs['num_model_classes']}

  return feature_store.build(layout.features_dir(workdir, network, split), inputs, 'features',
                             config.features.shard_size, make_shard_fn, describe)


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
