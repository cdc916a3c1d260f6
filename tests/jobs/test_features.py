"""The features job: store layout and values, kill-and-resume, refusing other checkpoints."""

import os

import jax
import numpy as np
import pytest
import torch
import torchvision

from gadc_jax import artifacts
from gadc_jax import feature_store
from gadc_jax import layout
from gadc_jax.jobs import features
from gadc_jax import networks
from gadc_jax.data import input_pipeline
from tests.conftest import killed_after

FIELDS = ('features', 'probs', 'ce', 'entropy', 'maxprob', 'labels', 'positions', 'ids')


def _store_arrays(store):
  return {f: np.asarray(store.load(f)) for f in FIELDS}


def test_store_is_sorted_by_class_and_matches_the_network(digits_workdir):
  config, workdir = digits_workdir
  store = feature_store.open_store(config, workdir, 'selection', 'train')
  data = input_pipeline.load_split_arrays(config.data, 'train')
  arrays = _store_arrays(store)
  n = len(data['label'])
  assert store.manifest['num_examples'] == n
  np.testing.assert_array_equal(np.sort(arrays['positions']), np.arange(n))
  # Class c is rows offsets[c]:offsets[c+1]; inside a class, split order.
  for c in range(store.num_classes):
    rows = slice(store.offsets[c], store.offsets[c + 1])
    assert np.all(arrays['labels'][rows] == c)
    assert np.all(np.diff(arrays['positions'][rows]) > 0)
  np.testing.assert_array_equal(arrays['ids'], data['id'][arrays['positions']])
  np.testing.assert_array_equal(arrays['labels'], data['label'][arrays['positions']])
  # Values equal a direct forward pass of the checkpoint.
  model, params, _ = networks.load_network(config, workdir, 'selection')
  images = data['image'][arrays['positions'][:50]]
  feats, logits = model.apply(params, networks.to_unit_range(images))
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(arrays['features'][:50], feats, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(arrays['probs'][:50], probs, rtol=1e-5, atol=1e-6)
  lab = arrays['labels'][:50]
  np.testing.assert_allclose(arrays['ce'][:50], -np.log(probs[np.arange(50), lab]),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(arrays['entropy'][:50], -np.sum(probs * np.log(probs), 1),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(arrays['maxprob'][:50], probs.max(1), rtol=1e-6)


def test_topk_probabilities_round_trip(digits_workdir, tmp_path):
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  config.features.probs_topk = 3
  config.features.networks = ('selection',)
  os.symlink(os.path.join(workdir, 'classifiers'), tmp_path / 'classifiers')
  store = features.compute_store(config, str(tmp_path), 'selection', 'train')
  full = feature_store.open_store(digits_workdir[0], workdir, 'selection', 'train')
  dense, ref = store.probs(2), full.probs(2)
  top = np.argsort(-ref, axis=1)[:, :3]
  np.testing.assert_allclose(np.take_along_axis(dense, top, 1),
                             np.take_along_axis(ref, top, 1), rtol=1e-6)
  np.testing.assert_allclose(dense.sum(1), np.sort(ref, 1)[:, -3:].sum(1), rtol=1e-5)


def test_killed_half_way_then_resumed_equals_uninterrupted(digits_workdir, tmp_path,
                                                           monkeypatch):
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  config.features.networks = ('evaluation',)
  config.features.shard_size = 300  # 1437 train images: 5 shards.
  os.symlink(os.path.join(workdir, 'classifiers'), tmp_path / 'classifiers')
  real = features._compute_shard
  monkeypatch.setattr(features, '_compute_shard', killed_after(real, 2))  # between shards
  with pytest.raises(KeyboardInterrupt):
    features.run(config, str(tmp_path))
  out = layout.features_dir(str(tmp_path), 'evaluation', 'train')
  assert sorted(os.listdir(os.path.join(out, 'shards'))) == [
      'inputs.json', 'shard-00000.npz', 'shard-00001.npz']
  open(os.path.join(out, 'shards', '.tmp-junk'), 'w').close()  # a write cut short.
  monkeypatch.setattr(features, '_compute_shard', real)
  features.run(config, str(tmp_path))

  resumed = _store_arrays(feature_store.FeatureStore(out))
  reference = _store_arrays(feature_store.open_store(config, workdir, 'evaluation', 'train'))
  for f in FIELDS:
    np.testing.assert_array_equal(resumed[f], reference[f], err_msg=f)


def test_features_of_another_checkpoint_are_refused(digits_workdir, tmp_path):
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  config.features.networks = ('evaluation',)
  out = layout.features_dir(workdir, 'evaluation', 'train')
  before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  # Pretend the classifier was retrained: its record now names other params.
  fake = tmp_path / 'fake'
  os.makedirs(fake / 'classifiers' / 'evaluation')
  record = artifacts.read_json(os.path.join(workdir, 'classifiers', 'evaluation',
                                            'classifier.json'))
  record['params_fingerprint'] = '0' * 16
  artifacts.atomic_write_json(str(fake / 'classifiers' / 'evaluation' / 'classifier.json'),
                              record)
  os.symlink(os.path.join(workdir, 'features'), fake / 'features')
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    features.run(config, str(fake))
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    feature_store.open_store(config, str(fake), 'evaluation', 'train')
  assert before == {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}


def test_features_of_a_converted_network(digits_workdir, tmp_path):
  """A published-weights network (here torchvision's ResNet-34 with random weights, saved as
  a local file) runs through the features job; its features equal torchvision's."""
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  torch.manual_seed(0)
  reference = torchvision.models.resnet34(weights=None).eval()
  torch.save(reference.state_dict(), str(tmp_path / 'resnet34.pth'))
  config.networks.resnet = {'arch': 'resnet34', 'checkpoint': str(tmp_path / 'resnet34.pth'),
                            'input_size': 32}
  config.features.batch_size = 128
  config.features.probs_topk = 5
  store = features.compute_store(config, str(tmp_path), 'resnet', 'train')
  assert store.manifest['feature_dim'] == 512 and store.manifest['num_model_classes'] == 1000
  data = input_pipeline.load_split_arrays(config.data, 'train')
  positions = np.asarray(store.load('positions', 3))[:4]
  x = np.asarray(jax.image.resize(data['image'][positions] / 127.5 - 1.0, (4, 32, 32, 1),
                                  'bilinear'))
  x = np.repeat(x, 3, axis=-1).transpose(0, 3, 1, 2)  # grey to RGB, NCHW
  with torch.no_grad():
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    body = torch.nn.Sequential(*list(reference.children())[:-1])
    expected = body(((torch.from_numpy(x).float() + 1) / 2 - mean) / std).flatten(1).numpy()
  got = np.asarray(store.load('features', 3))[:4]
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
