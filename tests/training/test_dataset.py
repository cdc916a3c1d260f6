"""Training batches: REPA targets follow the horizontal flips of their images."""

import jax
import numpy as np
import pytest

from gadc_jax.training import dataset


def _patch_means(images, patch):
  """A stand-in encoder: per-patch channel means [B, rows * cols, C], row-major."""
  b, h, w, c = images.shape
  grid = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return grid.mean(axis=(2, 4)).reshape(b, -1, c)


def test_flipped_images_get_the_tokens_of_the_flipped_image():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((16, 8, 12, 3)).astype(np.float32)  # a 4 x 6 grid of 2x2.
  data = dataset.TrainingSet(x=images, logvar=None, labels=np.arange(16, dtype=np.int32),
                             repa=_patch_means(images, 2))
  batch = dataset.host_batch(data, np.arange(16), jax.random.key(0))
  flipped = np.array([not np.array_equal(a, b) for a, b in zip(batch['x'], images)])
  assert 0 < flipped.sum() < 16
  np.testing.assert_array_equal(batch['x'][flipped], images[flipped][:, :, ::-1])
  # The encoder run on the image the model sees: mirrored targets for the flipped rows.
  np.testing.assert_allclose(batch['repa'], _patch_means(batch['x'], 2), atol=1e-6)
  np.testing.assert_array_equal(batch['repa'][~flipped], data.repa[~flipped])
  # Without a flip key nothing moves.
  same = dataset.host_batch(data, np.arange(16), None)
  np.testing.assert_array_equal(same['repa'], data.repa)


def test_mirror_needs_a_grid_of_the_images_shape():
  tokens = np.arange(2 * 24 * 1.0).reshape(2, 24, 1)
  np.testing.assert_array_equal(dataset.mirror_token_grid(tokens, 8, 12)[0, :6, 0],
                                [5, 4, 3, 2, 1, 0])
  with pytest.raises(ValueError, match='24 REPA tokens.*8x8'):
    dataset.mirror_token_grid(tokens, 8, 8)
