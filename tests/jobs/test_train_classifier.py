"""The digits classifiers: accurate, resumable to the same params, refusing other inputs."""

import os

import jax
import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import networks
from gadc_jax.jobs import train_classifier
from gadc_jax.training import classifier
from gadc_jax.training import train_state
from tests.conftest import digits_config, killed_after


def test_both_networks_are_accurate(digits_workdir):
  config, workdir = digits_workdir
  archs = set()
  for name in ('selection', 'evaluation'):
    model, params, record = networks.load_network(config, workdir, name)
    assert record['test_accuracy'] > 0.95, (name, record['test_accuracy'])
    archs.add(record['arch'])
    assert record['params_fingerprint'] == artifacts.array_fingerprint(params)
  assert len(archs) == 2  # two different architectures.
  assert config.networks.selection.seed != config.networks.evaluation.seed


def test_batches_depend_only_on_key_and_step():
  key = jax.random.PRNGKey(3)
  a = train_state.batch_indices(key, 7, 100, 16)
  b = train_state.batch_indices(key, 7, 100, 16)
  np.testing.assert_array_equal(a, b)
  assert len(set(a.tolist())) == 16
  assert not np.array_equal(a, train_state.batch_indices(key, 8, 100, 16))


def _small_config(tfds_dir):
  config = digits_config(tfds_dir)
  config.classifier.networks = ('evaluation',)
  config.classifier.steps = 40
  config.classifier.checkpoint_every = 20
  return config


def test_kill_and_resume_gives_same_params(tmp_path, tfds_dir, monkeypatch):
  config = _small_config(tfds_dir)
  full = str(tmp_path / 'full')
  train_classifier.run(config, full)

  # "Kill" the second run right after its step-20 checkpoint.
  interrupted = str(tmp_path / 'interrupted')
  real_step = classifier.train_step
  monkeypatch.setattr(classifier, 'train_step', killed_after(real_step, 21))
  with pytest.raises(KeyboardInterrupt):
    train_classifier.run(config, interrupted)
  assert not os.path.exists(os.path.join(interrupted, 'classifiers', 'evaluation',
                                         'classifier.json'))
  monkeypatch.setattr(classifier, 'train_step', real_step)
  train_classifier.run(config, interrupted)

  _, p_full, r_full = networks.load_network(config, full, 'evaluation')
  _, p_res, r_res = networks.load_network(config, interrupted, 'evaluation')
  assert r_full['params_fingerprint'] == r_res['params_fingerprint']
  jax.tree.map(np.testing.assert_array_equal, p_full, p_res)


def test_other_config_is_refused_not_overwritten(tmp_path, tfds_dir):
  config = _small_config(tfds_dir)
  workdir = str(tmp_path)
  train_classifier.run(config, workdir)
  record = os.path.join(workdir, 'classifiers', 'evaluation', 'classifier.json')
  before = open(record).read()
  config.classifier.steps = 41
  with pytest.raises(ValueError, match='fingerprint mismatch'):
    train_classifier.run(config, workdir)
  assert open(record).read() == before
