"""The gadc_digits builder against scikit-learn's copy of the digits."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets

from gadc_jax.data import gadc_digits


def _build(data_dir) -> tfds.core.DatasetBuilder:
  builder = gadc_digits.GadcDigits(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _read(builder, split: str) -> dict[str, np.ndarray]:
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  return {
      'id': np.asarray([ex['id'].decode() for ex in examples]),
      'image': np.stack([ex['image'] for ex in examples]),
      'label': np.asarray([ex['label'] for ex in examples]),
  }


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  builder = _build(tmp_path_factory.mktemp('digits_a'))
  return {split: _read(builder, split) for split in ('train', 'test')}


def test_pixel_map_is_invertible():
  counts = np.arange(gadc_digits.MAX_COUNT + 1)
  pixels = gadc_digits.counts_to_pixels(counts)
  assert pixels.dtype == np.uint8
  assert pixels[0] == 0 and pixels[-1] == 255
  np.testing.assert_array_equal(gadc_digits.pixels_to_counts(pixels), counts)
  np.testing.assert_array_equal(pixels, np.floor(counts * 255 / 16 + 0.5))


def test_builder_equals_sklearn(built):
  sk = datasets.load_digits()
  assert len(built['train']['id']) == 1437 and len(built['test']['id']) == 360
  rows = np.concatenate([
      np.asarray([int(i.removeprefix('digits-')) for i in built[s]['id']])
      for s in ('train', 'test')])
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(sk.target)))
  images = np.concatenate([built[s]['image'] for s in ('train', 'test')])
  labels = np.concatenate([built[s]['label'] for s in ('train', 'test')])
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(gadc_digits.pixels_to_counts(images[..., 0]), sk.images[rows])
  np.testing.assert_array_equal(labels, sk.target[rows])


def test_splits_are_in_id_order(built):
  for split in ('train', 'test'):
    ids = list(built[split]['id'])
    assert ids == sorted(ids)


def test_split_is_stratified(built):
  for k in range(10):
    n_train = int(np.sum(built['train']['label'] == k))
    n_test = int(np.sum(built['test']['label'] == k))
    assert abs(n_test - 0.2 * (n_train + n_test)) <= 1


def test_ids_and_split_stable_across_builds(built, tmp_path_factory):
  again = _build(tmp_path_factory.mktemp('digits_b'))
  for split in ('train', 'test'):
    other = _read(again, split)
    for key in ('id', 'image', 'label'):
      np.testing.assert_array_equal(other[key], built[split][key])
