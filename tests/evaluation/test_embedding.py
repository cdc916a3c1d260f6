"""ADM's Inception input against TensorFlow's ResizeBilinear, the op of ADM's Inception graph."""

import numpy as np
import pytest
import tensorflow as tf

from gadc_jax import networks
from gadc_jax.evaluation import embedding


def _tf_resize(images, size):
  """The graph's node: ResizeBilinear with its 2015 attributes (no align_corners, no
  half-pixel centres); TF2's tf.image.resize is the half-pixel op and differs."""
  return tf.raw_ops.ResizeBilinear(images=images.astype(np.float32), size=[size, size],
                                   align_corners=False, half_pixel_centers=False).numpy()


@pytest.mark.parametrize('shape', [(2, 64, 64, 3), (1, 37, 50, 3), (1, 512, 384, 3)])
def test_resize_equals_tensorflows_resize_bilinear(shape):
  # Up (ADM's 64 and 256 px batches), uneven, and down (its 512 px batches).
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  np.testing.assert_allclose(embedding.resize_bilinear_tf1(images, 299),
                             _tf_resize(images, 299), rtol=0, atol=1e-4)


def test_adm_inception_input_is_the_graphs_resize_then_its_scaling():
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  expected = (_tf_resize(images, 299) - 128.0) * 0.0078125  # the graph's Sub and Mul nodes
  got = np.asarray(embedding.adm_inception_input(images))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  # Not the network's own input: [-1, 1] and a half-pixel (jax.image) resize.
  own = np.asarray(networks.preprocess(images, (299, True)))
  assert np.abs(own - got).max() > 0.1


def test_adm_inception_input_wants_rgb():
  with pytest.raises(ValueError, match=r"takes RGB images \[B, H, W, 3\], got shape \(1, 8, 8, 1\)"):
    embedding.adm_inception_input(np.zeros((1, 8, 8, 1), np.uint8))
