"""Input pipelines: digits against scikit-learn, image folders, ADM crop, errors, training."""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from gadc_jax import defaults
from gadc_jax.data import gadc_digits
from gadc_jax.data import input_pipeline as ip


@pytest.fixture(scope='module')
def digits_cfg(tmp_path_factory):
  """The default config on a private TFDS dir; `split_info` prepares digits there."""
  cfg = defaults.data()
  cfg.data_dir = str(tmp_path_factory.mktemp('tfds'))
  ip.split_info(cfg, 'train')
  return cfg


@pytest.fixture(scope='module')
def digits_train(digits_cfg):
  return ip.load_split_arrays(digits_cfg, 'train')


def _rows(ids) -> np.ndarray:
  return np.asarray([int(i.removeprefix('digits-')) for i in ids])


def _folder_cfg(root, image_size=6):
  cfg = defaults.data()
  cfg.name, cfg.folder, cfg.image_size = 'folder', str(root), image_size
  return cfg


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """root/<class>/... with PNGs (exact pixels) and a JPEG; returns (root, {id: (label, png)})."""
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  expected = {}
  for label, (name, files) in enumerate([
      ('cat', ['b.png', 'a.png', 'sub/c.png']), ('dog', ['x.png', 'y.jpg'])]):
    for filename in files:
      os.makedirs(root / name / os.path.dirname(filename), exist_ok=True)
      pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / name / filename)
      expected[f'{name}/{filename}'] = (label, pixels)
  (root / 'dog' / 'notes.txt').write_text('not an image')
  return root, expected


def test_default_config_and_split_info(digits_cfg):
  info = ip.split_info(digits_cfg, 'test')
  assert info == ip.SplitInfo('gadc_digits', '1.0.0', 'test', 360, 10,
                              tuple('0123456789'), (8, 8, 1))
  assert ip.split_info(digits_cfg, 'train').num_examples == 1437


def test_load_split_arrays_equals_sklearn(digits_train):
  sk = datasets.load_digits()
  rows = _rows(digits_train['id'])
  assert list(rows) == sorted(rows) and len(rows) == 1437
  assert digits_train['label'].dtype == np.int32
  assert digits_train['image'].dtype == np.uint8
  np.testing.assert_array_equal(digits_train['label'], sk.target[rows])
  np.testing.assert_array_equal(
      gadc_digits.pixels_to_counts(digits_train['image'][..., 0]), sk.images[rows])


def test_iterate_batches_slices_concatenate_in_order(digits_cfg, digits_train):
  parts = []
  for start, end in [(0, 500), (500, 1001), (1001, None)]:
    batches = list(ip.iterate_batches(digits_cfg, 'train', 128, start=start, end=end))
    assert all(len(b['id']) == 128 for b in batches[:-1])
    parts.extend(batches)
  for key in ('id', 'label', 'image'):
    np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]),
                                  digits_train[key])
  assert not list(ip.iterate_batches(digits_cfg, 'train', 8, start=7, end=7))


def test_host_shards_are_disjoint_and_cover():
  for num_items, count in [(10, 3), (2, 4), (1437, 8)]:
    shards = [ip.host_shard(num_items, i, count) for i in range(count)]
    assert [r for s in shards for r in s] == list(range(num_items))
  assert ip.host_shard(5) == range(5)  # One process in tests.


def test_adm_center_crop_hand_computed():
  # 4x6 -> size 2: the short side 4 >= 2*2, so one 2x2 box halving gives 2x3 (block means);
  # the bicubic step is then at scale 1 (no change) and the centre crop keeps columns 0..1.
  image = np.array([[0, 4, 8, 8, 100, 0],
                    [0, 4, 8, 8, 100, 0],
                    [12, 12, 40, 40, 2, 2],
                    [12, 12, 40, 40, 2, 2]], np.uint8)[..., None]
  np.testing.assert_array_equal(ip.adm_center_crop(image, 2)[..., 0], [[2, 8], [12, 40]])


def test_adm_center_crop_shapes_and_identity():
  rng = np.random.default_rng(1)
  for shape, size in [((37, 53, 3), 16), ((53, 37, 3), 16), ((300, 200, 3), 64),
                      ((5, 9, 1), 8), ((20, 20, 1), 7)]:
    out = ip.adm_center_crop(rng.integers(0, 256, shape, dtype=np.uint8), size)
    assert out.shape == (size, size, shape[-1]) and out.dtype == np.uint8
  image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(ip.adm_center_crop(image, 8), image)
  flat = np.full((40, 70, 3), 77, np.uint8)  # Resampling keeps a constant image constant.
  np.testing.assert_array_equal(ip.adm_center_crop(flat, 12), 77)


def test_image_folder_reads_back(image_folder):
  root, expected = image_folder
  cfg = _folder_cfg(root)
  info = ip.split_info(cfg, 'train')
  assert (info.dataset, info.num_examples, info.num_classes, info.class_names,
          info.image_shape) == ('folder', 5, 2, ('cat', 'dog'), (6, 6, 3))
  arrays = ip.load_split_arrays(cfg, 'train')
  assert list(arrays['id']) == sorted(expected)
  for example_id, label, image in zip(arrays['id'], arrays['label'], arrays['image']):
    assert label == expected[example_id][0]
    if example_id.endswith('.png'):  # Lossless and already 6x6: exact pixels.
      np.testing.assert_array_equal(image, expected[example_id][1])
  resized = ip.load_split_arrays(_folder_cfg(root, image_size=4), 'train')
  assert resized['image'].shape == (5, 4, 4, 3)


def _raises(words, fn, *args, **kwargs):
  with pytest.raises((ValueError, OSError)) as info:
    result = fn(*args, **kwargs)
    if hasattr(result, '__next__'):
      next(result)
  for word in words:
    assert word in str(info.value), (word, str(info.value))
  assert '\n' not in str(info.value)


def test_folder_errors(tmp_path):
  _raises(['does not exist'], ip.split_info, _folder_cfg(tmp_path / 'nope'), 'train')
  _raises(['data.folder'], ip.split_info, _folder_cfg(''), 'train')
  (tmp_path / 'empty').mkdir()
  _raises(['empty', 'subfolder'], ip.split_info, _folder_cfg(tmp_path / 'empty'), 'train')
  (tmp_path / 'no_images' / 'a').mkdir(parents=True)
  (tmp_path / 'no_images' / 'a' / 'x.txt').write_text('text')
  _raises(['no image files'], ip.split_info, _folder_cfg(tmp_path / 'no_images'), 'train')
  bad = tmp_path / 'bad' / 'a'
  bad.mkdir(parents=True)
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(bad / 'good.png')
  (bad / 'broken.png').write_bytes(b'not a png')
  cfg = _folder_cfg(tmp_path / 'bad')
  _raises(['cannot read image', 'broken.png'], ip.load_split_arrays, cfg, 'train')
  _raises(['cannot read image', 'broken.png'], ip.iterate_batches, cfg, 'train', 2)
  _raises(["unknown split 'test'", 'train'], ip.split_info, cfg, 'test')


def test_tfds_errors(digits_cfg, tmp_path):
  cfg = defaults.data()
  cfg.data_dir = str(tmp_path)
  cfg.name = 'no_such_dataset'
  _raises(['no_such_dataset', 'gadc_digits', 'imagenet2012', 'folder'],
          ip.split_info, cfg, 'train')
  cfg.name = 'mnist'
  _raises(['mnist is not prepared', str(tmp_path), 'data.download=True'],
          ip.split_info, cfg, 'train')
  cfg.name = 'imagenet2012'
  _raises(['imagenet2012', str(tmp_path), 'manual_dir'], ip.split_info, cfg, 'train')
  cfg.manual_dir = str(tmp_path / 'missing')
  _raises(['manual_dir', 'does not exist'], ip.split_info, cfg, 'train')
  _raises(["unknown split 'validation'", 'test', 'train'],
          ip.split_info, digits_cfg, 'validation')
  _raises(['outside split'], ip.iterate_batches, digits_cfg, 'test', 8, 300, 400)
  _raises(['batch_size'], ip.iterate_batches, digits_cfg, 'test', 0)
  bad_size = defaults.data()
  bad_size.image_size = 0
  _raises(['image_size'], ip.split_info, bad_size, 'train')


def test_read_examples_at_positions(digits_cfg, digits_train, image_folder):
  positions = np.array([100, 3, 1436, 57, 4])
  got = ip.read_examples(digits_cfg, 'train', positions)
  for key in ('id', 'label', 'image'):
    np.testing.assert_array_equal(got[key], digits_train[key][positions])
  root, _ = image_folder
  folder_cfg = _folder_cfg(root)
  everything = ip.load_split_arrays(folder_cfg, 'train')
  got = ip.read_examples(folder_cfg, 'train', [2, 0])
  for key in ('id', 'label', 'image'):
    np.testing.assert_array_equal(got[key], everything[key][[2, 0]])
  _raises('outside split', ip.read_examples, digits_cfg, 'train', [5000])
