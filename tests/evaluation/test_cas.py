"""CAS against independent computations: on the real train split it is the train_classifier
job's test accuracy (same arch, seed and steps); on shuffled labels it is near chance."""

import os

import ml_collections
import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax.data import input_pipeline
from gadc_jax.evaluation import cas
from gadc_jax.jobs import train_classifier
from tests.conftest import digits_config


def _cas_cfg(config, steps):
  return ml_collections.ConfigDict({
      'network': 'evaluation', 'split': 'test', 'steps': steps,
      'batch_size': config.classifier.batch_size,
      'learning_rate': config.classifier.learning_rate,
      'weight_decay': config.classifier.weight_decay})


def test_cas_on_real_images_is_train_classifier_accuracy_and_chance_on_shuffled(
    tmp_path, tfds_dir):
  config = digits_config(tfds_dir)
  config.classifier.networks = ('evaluation',)
  config.classifier.steps = 150
  workdir = str(tmp_path)
  record = train_classifier.train_network(config, workdir, 'evaluation')
  train = input_pipeline.load_split_arrays(config.data, 'train')
  test = input_pipeline.load_split_arrays(config.data, 'test')
  cfg = _cas_cfg(config, config.classifier.steps)
  net_cfg = config.networks.evaluation

  real = cas.train_and_score(net_cfg, cfg, train['image'], train['label'], test['image'],
                             test['label'], 10)
  assert real == record['test_accuracy']
  assert real > 0.8

  shuffled = np.random.default_rng(0).permutation(train['label'])
  chance = cas.train_and_score(net_cfg, cfg, train['image'], shuffled, test['image'],
                               test['label'], 10)
  assert chance < 0.25  # chance is 0.1; a leak of the true labels would give ~0.9.


def test_run_reads_samples_writes_record_and_refuses_other_inputs(tmp_path, tfds_dir):
  config = digits_config(tfds_dir)
  workdir = str(tmp_path)
  test = input_pipeline.load_split_arrays(config.data, 'test')
  # Stand-in samples: the real test images themselves, as the sample job records them.
  folder = layout.samples_dir(workdir, config)
  artifacts.atomic_write_npz(layout.samples_file(workdir, config), images=test['image'],
                             labels=test['label'])
  artifacts.atomic_write_json(os.path.join(folder, 'samples.json'), {
      'fingerprint': 'f00', 'files': artifacts.describe_files(folder, ['samples.npz'])})
  cfg = _cas_cfg(config, 100)
  first = cas.run(config, cfg, workdir)
  assert first['cas'] > 0.9  # trained and scored on the same images.
  assert first['num_samples'] == first['num_test'] == len(test['label'])
  assert cas.run(config, cfg, workdir) == first  # finished: read back, not retrained.
  cfg.steps = 101
  with pytest.raises(ValueError, match='CAS fingerprint mismatch'):
    cas.run(config, cfg, workdir)
  cfg.steps = 100
  cfg.network = 'nope'
  with pytest.raises(ValueError, match='config.study.cas.network'):
    cas.run(config, cfg, workdir)
