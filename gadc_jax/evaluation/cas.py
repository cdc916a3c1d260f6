"""Classification Accuracy Score (Ravuri & Vinyals 2019): how well a classifier trained only on
generated images classifies real ones.

A classifier of a network of config.networks (its arch, module arguments and seed) is trained
on the images and labels of a samples .npz with the train_classifier job's step
(gadc_jax.training.classifier), then scored by top-1 accuracy on a real split. The same
settings, seed and images give the same classifier as the train_classifier job, so CAS on the
real train split is that job's test accuracy.

    config.study.cas: network (a name in config.networks with a seed), split (the real split
                      scored), steps, batch_size, learning_rate, weight_decay.

`run` writes WORKDIR/cas/NAME.json (NAME: the samples' name) with the fingerprint of its
inputs; a finished one is returned as it is.
"""

import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import encoders
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.training import classifier
from gadc_jax.training import train_state

_TRAINING = ('steps', 'batch_size', 'learning_rate', 'weight_decay')


def check_config(config: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict,
                 where: str = 'config.study.cas') -> None:
  """cfg (the CAS section, called `where`), checked before any work: one ValueError."""
  validation.require(cfg, where, positive_ints=('steps', 'batch_size'),
                     positive=('learning_rate',), non_negative=('weight_decay',))
  networks.check_use(config, f'{where}.network', (cfg.network,),
                     [(f'{where}.split', cfg.split)])
  if 'seed' not in config.networks[cfg.network]:
    raise ValueError(f'{where}.network {cfg.network!r} has no seed: CAS trains a classifier '
                     'of that architecture from its seed')


def train_and_score(net_cfg: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict,
                    images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                    test_labels: np.ndarray, num_classes: int) -> float:
  """Top-1 accuracy on (test_images, test_labels) of a classifier trained on (images, labels).

  Args:
    net_cfg: a network of config.networks (arch, seed, module arguments).
    cfg: steps, batch_size, learning_rate, weight_decay of the training.
    images: uint8 [N, H, W, C]; labels: int [N] in [0, num_classes).
    test_images: uint8 [M, H, W, C]; test_labels: int [M].
  """
  model = encoders.build(net_cfg.arch, num_classes, **networks.module_kwargs(net_cfg))
  tx = train_state.optimizer(cfg.learning_rate, cfg.weight_decay)
  state = classifier.init_state(model, tx, net_cfg.seed, images.shape[1:])
  key = classifier.batch_key(net_cfg.seed)
  labels = np.asarray(labels, np.int32)
  for step in range(cfg.steps):
    idx = train_state.batch_indices(key, step, len(labels), cfg.batch_size)
    batch = {'image': images[idx], 'label': labels[idx]}
    state, _, _ = classifier.train_step(state, batch, key, model=model, tx=tx)
  return classifier.accuracy(model, state['params'], test_images,
                             np.asarray(test_labels, np.int32))


def run(config: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict,
        workdir: str) -> dict[str, Any]:
  """CAS of the sample job's output for `config` (cfg: the CAS section); its record."""
  check_config(config, cfg)
  folder = layout.samples_dir(workdir, config)
  done = os.path.join(folder, 'samples.json')
  if not os.path.exists(done):
    raise FileNotFoundError(f'no finished samples in {folder}; run the sample job first')
  samples_record = artifacts.read_json(done)
  samples_path = layout.samples_file(workdir, config)
  name = os.path.basename(samples_path)
  artifacts.verify_files(folder, {name: samples_record['files'][name]},
                         f'the samples of {folder}')
  info = input_pipeline.split_info(config.data, cfg.split)
  inputs = {'samples': samples_record['fingerprint'],
            'network': networks.settings(config.networks[cfg.network]),
            'split': [info.dataset, info.version, info.split, info.num_examples],
            'image_size': config.data.image_size,
            'training': {k: cfg[k] for k in _TRAINING}}
  expected = artifacts.fingerprint(inputs)
  out = os.path.join(workdir, 'cas', f'{layout.samples_name(config)}.json')
  if os.path.exists(out):
    record = artifacts.read_json(out)
    artifacts.check_fingerprint(out, expected, record['fingerprint'], 'CAS')
    return record
  with np.load(samples_path) as data:
    images, labels = data['images'], data['labels']
  test = input_pipeline.load_split_arrays(config.data, cfg.split)
  score = train_and_score(config.networks[cfg.network], cfg, images, labels, test['image'],
                          test['label'], info.num_classes)
  logging.info('CAS of %s: %.4f (%s on %d samples, top-1 on %s)', samples_path, score,
               cfg.network, len(labels), cfg.split)
  record = {'fingerprint': expected, 'inputs': inputs, 'cas': score,
            'num_samples': int(len(labels)), 'num_test': int(len(test['label']))}
  artifacts.atomic_write_json(out, record)
  return record
