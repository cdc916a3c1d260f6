"""TFDS builder `gadc_digits`: scikit-learn's bundled copy of the UCI handwritten digits.

1,797 real 8x8 grey images of the digits 0..9, built offline (the data ships inside
scikit-learn) into any TFDS data dir:

    builder = GadcDigits(data_dir=...)
    builder.download_and_prepare()

Features
  id:    Text, 'digits-NNNNN' where NNNNN is the row of the image in
         `sklearn.datasets.load_digits()`; stable across builds.
  image: uint8 [8, 8, 1]. scikit-learn stores counts 0..16 (pixels set in a 4x4 block of the
         original 32x32 bitmap); they are mapped to 0..255 by `counts_to_pixels`,
         v = floor(x * 255 / 16 + 1/2), and back exactly by `pixels_to_counts`.
  label: ClassLabel with 10 classes, names '0'..'9'.

Splits: a stratified 80/20 split, `train_test_split(test_size=0.2, stratify=labels,
random_state=0)` over the row indices: 1,437 train and 360 test images. Shuffling is
disabled, so each split reads back in increasing row (= id) order.
"""

import os

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

TEST_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
MAX_COUNT = 16


def counts_to_pixels(counts: np.ndarray) -> np.ndarray:
  """Maps scikit-learn's counts 0..16 (any shape) to uint8 0..255, rounding half up."""
  counts = np.asarray(counts).astype(np.int64)
  return ((counts * 255 + MAX_COUNT // 2) // MAX_COUNT).astype(np.uint8)


def pixels_to_counts(pixels: np.ndarray) -> np.ndarray:
  """Inverse of `counts_to_pixels`: uint8 images (any shape) back to int64 counts 0..16."""
  pixels = np.asarray(pixels).astype(np.int64)
  return (pixels * MAX_COUNT + 127) // 255


def example_id(row: int) -> str:
  return f'digits-{row:05d}'


def split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
  """The fixed stratified split of the row indices: {'train': rows, 'test': rows}, sorted."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  rows = np.arange(len(labels))
  train, test = model_selection.train_test_split(
      rows, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
  return {'train': np.sort(train), 'test': np.sort(test)}


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's copy: counts [1797, 8, 8] int64 in 0..16 and labels [1797] int64."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  return digits.images.astype(np.int64), digits.target.astype(np.int64)


class GadcDigits(tfds.core.GeneratorBasedBuilder):
  """The UCI handwritten digits (scikit-learn's copy) with a fixed stratified split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'image': tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(
                names=[str(k) for k in range(NUM_CLASSES)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        # Keeps each split in row order, so slices like 'train[100:200]' are stable.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn; nothing is downloaded.
    counts, labels = load_sklearn_digits()
    return {
        split: self._generate_examples(counts, labels, rows)
        for split, rows in split_rows(labels).items()
    }

  def _generate_examples(self, counts, labels, rows):
    pixels = counts_to_pixels(counts)[..., None]
    for row in rows:
      key = example_id(int(row))
      yield key, {'id': key, 'image': pixels[row], 'label': int(labels[row])}
