"""The evaluate job on digits: real test images score close to the train split, noise far;
against an ADM reference batch, ADM's Inception input."""

import glob
import json
import os

import flax.linen as nn
import numpy as np
import pytest
import tensorflow as tf

from gadc_jax import artifacts
from gadc_jax.data import input_pipeline
from gadc_jax import defaults
from gadc_jax import networks
from gadc_jax.evaluation import embedding
from gadc_jax.evaluation import metrics
from gadc_jax.jobs import evaluate
from tests.conftest import digits_config


def _config(config, samples, out_name):
  config = config.copy_and_resolve_references()
  config.evaluate = defaults.evaluate()
  config.evaluate.samples = samples
  config.evaluate.reference = 'split:train'
  config.evaluate.out_name = out_name
  config.evaluate.batch_size = 128
  config.evaluate.is_splits = 2
  config.evaluate.kid_subsets = 10
  return config


def _scalars(logdir):
  """{tag: value} of the TensorBoard event file in logdir."""
  (path,) = glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
  return {value.tag: float(tf.make_ndarray(value.tensor))
          for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}


@pytest.fixture(scope='module')
def evaluated(digits_workdir):
  """(config, workdir, record of real test images, record of noise images)."""
  config, workdir = digits_workdir
  test = input_pipeline.load_split_arrays(config.data, 'test')
  np.savez(os.path.join(workdir, 'real.npz'), images=test['image'], labels=test['label'])
  noise = np.random.default_rng(0).integers(0, 256, test['image'].shape, dtype=np.uint8)
  np.savez(os.path.join(workdir, 'noise.npz'), images=noise)
  real = evaluate.run(_config(config, 'real.npz', 'real'), workdir)
  noise = evaluate.run(_config(config, 'noise.npz', 'noise'), workdir)
  return config, workdir, real, noise


def test_real_images_score_well_and_noise_badly(evaluated):
  _, _, real, noise = evaluated
  m, n = real['metrics'], noise['metrics']
  assert sorted(m) == ['fid_evaluation', 'is_evaluation', 'is_std_evaluation',
                       'kid_evaluation', 'kid_std_evaluation', 'precision_evaluation',
                       'recall_evaluation']
  assert real['skipped'] == {'sfid_evaluation': "network 'evaluation' returns no spatial features"}
  assert m['fid_evaluation'] < 0.1 * n['fid_evaluation']
  assert abs(m['kid_evaluation']) < 0.02 * n['kid_evaluation']  # unbiased: ~0 for real images
  assert m['precision_evaluation'] > 0.8 and m['recall_evaluation'] > 0.8
  assert n['precision_evaluation'] < 0.2
  assert m['is_evaluation'] > 5.0  # ten classes, confidently and evenly predicted
  assert real['num_samples'] == 360 and real['num_reference'] == {'evaluation': 1437}


def test_json_and_tensorboard_hold_the_metrics(evaluated):
  _, workdir, real, _ = evaluated
  record = artifacts.read_json(os.path.join(workdir, 'eval', 'real.json'))
  assert record['metrics'] == pytest.approx(real['metrics'])
  assert record['fingerprint'] == artifacts.fingerprint(record['inputs'])
  assert _scalars(os.path.join(workdir, 'eval', 'real')) == pytest.approx(real['metrics'])
  assert os.listdir(os.path.join(workdir, 'eval_cache')) == ['evaluation-split-train.npz']


def test_rerun_skips_and_other_samples_under_the_same_name_are_refused(evaluated):
  config, workdir, real, _ = evaluated
  assert evaluate.run(_config(config, 'real.npz', 'real'), workdir) == real
  with pytest.raises(ValueError, match='evaluation fingerprint mismatch'):
    evaluate.run(_config(config, 'noise.npz', 'real'), workdir)


def test_streamed_npz_batches_equal_np_load(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (10, 3, 3, 2), dtype=np.uint8)
  for save in (np.savez, np.savez_compressed):
    path = str(tmp_path / f'{save.__name__}.npz')
    save(path, images=images)
    batches = list(embedding.npz_image_batches(path, 'images', 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_bad_samples_are_user_errors(evaluated, tmp_path):
  config, workdir, _, _ = evaluated
  path = str(tmp_path / 'wrong.npz')
  np.savez(path, images=np.zeros((5, 4, 4, 1), np.uint8))
  with pytest.raises(ValueError, match=r'images are \(4, 4, 1\) but the reference'):
    evaluate.run(_config(config, path, 'wrong'), workdir)
  np.savez(path, pictures=np.zeros((5, 8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match="has no array 'images'"):
    evaluate.run(_config(config, path, 'wrong'), workdir)
  np.savez(path, images=np.zeros((5, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match='must be uint8 images'):
    evaluate.run(_config(config, path, 'wrong'), workdir)
  np.savez(path, images=np.zeros((3, 8, 8, 1), np.uint8))  # fewer than k + 1 = 4
  with pytest.raises(ValueError, match='3 samples; at least 4'):
    evaluate.run(_config(config, path, 'wrong'), workdir)
  with pytest.raises(FileNotFoundError, match='no samples at .*missing.npz'):
    evaluate.run(_config(config, 'missing.npz', 'wrong'), workdir)


class _PixelProbe(nn.Module):
  """A stand-in for Inception: features are the input pixels on a sparse grid, so they show
  both the resize and the scaling the network is fed."""

  @nn.compact
  def __call__(self, images):
    features = images[:, ::50, ::50, :].reshape(images.shape[0], -1)
    return features, features[:, :10]


def test_adm_reference_batch_feeds_adms_inception_input(tmp_path, tfds_dir, monkeypatch):
  rng = np.random.default_rng(2)
  reference = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
  samples = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
  np.savez(tmp_path / 'VIRTUAL_tiny.npz', arr_0=reference)
  np.savez(tmp_path / 'samples.npz', images=samples)
  monkeypatch.setattr(networks, 'load_network', lambda config, workdir, name: (
      _PixelProbe(), {}, {'arch': 'pixel_probe', 'params_fingerprint': 'none'}))
  config = _config(digits_config(tfds_dir), 'samples.npz', 'adm')
  config.networks = {'inception': {'arch': 'pixel_probe'}}
  config.evaluate.networks = ('inception',)
  config.evaluate.reference = 'VIRTUAL_tiny.npz'
  config.evaluate.metrics = ('fid', 'kid')
  record = evaluate.run(config, str(tmp_path))

  def adm_features(images):  # ADM's graph input, with TensorFlow's own resize
    resized = tf.raw_ops.ResizeBilinear(images=images.astype(np.float32), size=[299, 299],
                                        align_corners=False, half_pixel_centers=False).numpy()
    return _PixelProbe().apply({}, (resized - 128.0) / 128.0)[0]

  ours, theirs = adm_features(samples), adm_features(reference)
  assert record['metrics']['fid_inception'] == pytest.approx(
      metrics.fid_from_features(ours, theirs), rel=1e-5)
  assert record['metrics']['kid_inception'] == pytest.approx(
      metrics.kid_from_features(ours, theirs, 1000, 10)[0], rel=1e-5)
