"""The difficulty job: D2C's diffusion difficulty score of every image of a split.

Every image of config.difficulty.split goes through the EMA model of the finished train run
that config.difficulty.scorer names (`gadc_jax.difficulty` has the score), at the fixed
timesteps and noise draws of config.difficulty. The scores are written like a feature store
(`gadc_jax.feature_store.build`): shards of the split (resumable; a SIGTERM stops between
them; hosts take disjoint ones), then one class-sorted `difficulty.npy` with ids, labels and
positions, and a manifest with the inputs' fingerprint and the files' sizes and checksums,
in WORKDIR/difficulty/RUN-SPLIT/. The select job reads it for method d2c.
"""

from absl import logging
import ml_collections
import numpy as np

from gadc_jax import difficulty
from gadc_jax import feature_store
from gadc_jax.data import input_pipeline


def _compute_shard(config, score, start: int, end: int) -> dict[str, np.ndarray]:
  """Scores, labels, ids and positions of examples [start, end) of the split."""
  cfg = config.difficulty
  parts, first = [], start
  for batch in input_pipeline.iterate_batches(config.data, cfg.split, cfg.batch_size, start,
                                              end):
    positions = np.arange(first, first + len(batch['label']), dtype=np.int64)
    first += len(positions)
    parts.append({'difficulty': score(batch['image'], batch['label'], positions),
                  'labels': batch['label'].astype(np.int32),
                  'ids': np.asarray(batch['id']).astype(str), 'positions': positions})
  shard = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  bad = np.flatnonzero(~np.isfinite(shard['difficulty']))
  if bad.size:
    raise ValueError(f'non-finite difficulty for example {shard["ids"][bad[0]]} (position '
                     f'{shard["positions"][bad[0]]}) of split {cfg.split}; check the scorer')
  return shard


def run(config: ml_collections.ConfigDict, workdir: str) -> feature_store.FeatureStore:
  difficulty.check_config(config)
  inputs = difficulty.expected_inputs(config, workdir)

  def make_shard_fn():
    score = difficulty.make_scorer(config, workdir)
    return lambda start, end: _compute_shard(config, score, start, end)

  store = feature_store.build(difficulty.store_dir(config, workdir), inputs, 'difficulty',
                              config.difficulty.shard_size, make_shard_fn)
  scores = np.asarray(store.load('difficulty'))
  logging.info('difficulty %s: %d images, scores %.4g to %.4g (mean %.4g)', store.path,
               len(scores), scores.min(), scores.max(), scores.mean())
  return store
