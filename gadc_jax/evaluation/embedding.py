"""Images to embeddings: streamed .npz image files, ADM's Inception input, embeddings.

The evaluate job embeds samples and reference images in the space of each evaluation network
(`networks.make_forward`); this module reads large .npz image files batch by batch and keeps
what the metrics need (features, logits, and the Gaussian statistics of FID and sFID).
Against an ADM reference batch, the Inception network sees its images as ADM's evaluator
feeds them to TF's Inception graph (`adm_inception_input`).
"""

from typing import Iterator
import zipfile

import jax.numpy as jnp
import numpy as np

from gadc_jax.evaluation import metrics as metrics_lib


def _open_npy_member(archive: zipfile.ZipFile, key: str, path: str):
  """(file positioned at the data, shape, dtype) of array `key` of an open .npz."""
  if f'{key}.npy' not in archive.namelist():
    keys = ', '.join(n[:-len('.npy')] for n in archive.namelist())
    raise ValueError(f'{path} has no array {key!r} (it has: {keys})')
  f = archive.open(f'{key}.npy')
  version = np.lib.format.read_magic(f)
  read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read_header is None:
    raise ValueError(f'{path}: array {key!r} has .npy format {version}, not 1.0/2.0')
  shape, fortran_order, dtype = read_header(f)
  if dtype != np.uint8 or len(shape) != 4 or fortran_order:
    raise ValueError(
        f'{path}: array {key!r} must be uint8 images [N, H, W, C] in C order; it is '
        f'{dtype} {shape}{" in Fortran order" if fortran_order else ""}')
  return f, shape, dtype


def _open_npz(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except zipfile.BadZipFile:
    raise ValueError(f'{path} is not an .npz file') from None


def npz_images_shape(path: str, key: str) -> tuple[int, ...]:
  """Shape [N, H, W, C] of uint8 images `key` of an .npz, read from its header only."""
  with _open_npz(path) as archive:
    f, shape, _ = _open_npy_member(archive, key, path)
    f.close()
    return shape


def npz_image_batches(path: str, key: str, batch_size: int) -> Iterator[np.ndarray]:
  """Batches uint8 [<= batch_size, H, W, C] of images `key` of an .npz, streamed.

  np.load would read the whole array (10 GB for 50,000 images at 256 px); this reads one
  batch at a time from the archive member, compressed or not.
  """
  with _open_npz(path) as archive:
    f, shape, dtype = _open_npy_member(archive, key, path)
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    with f:
      for start in range(0, shape[0], batch_size):
        count = min(batch_size, shape[0] - start)
        yield np.frombuffer(f.read(count * row_bytes), dtype).reshape((count,) + shape[1:])


# The side ADM's Inception graph resizes every image to.
ADM_INCEPTION_SIZE = 299


def _tf1_bilinear_taps(in_size: int, out_size: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower [out], upper [out] int32, lerp [out] float32) of TF1's ResizeBilinear on one axis.

  The legacy op (align_corners=False, half_pixel_centers=False, all that existed in 2015)
  maps output i to input i * (in / out), in float32: no half-pixel offset, so the image
  shifts by up to half a pixel against any half-pixel resize.
  """
  position = np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size))
  lower = np.floor(position)
  upper = np.minimum(np.ceil(position), in_size - 1)
  return lower.astype(np.int32), upper.astype(np.int32), position - lower


def resize_bilinear_tf1(images: jnp.ndarray, size: int) -> jnp.ndarray:
  """TF1's ResizeBilinear of float images [B, H, W, C] to [B, size, size, C].

  Interpolates along the width, then the height, each as a + (b - a) * lerp, the op's own
  order of float32 operations. Antialiasing does not exist in the op: downsizing samples.
  """
  images = jnp.asarray(images, jnp.float32)
  for axis in (2, 1):
    lower, upper, lerp = _tf1_bilinear_taps(images.shape[axis], size)
    a, b = jnp.take(images, lower, axis=axis), jnp.take(images, upper, axis=axis)
    images = a + (b - a) * lerp.reshape((-1,) + (1,) * (3 - axis))
  return images


def adm_inception_input(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 RGB [B, H, W, 3] -> [B, 299, 299, 3], the input of ADM's Inception graph.

  ADM's evaluator feeds float32 pixels in [0, 255] to the graph's ExpandDims:0, after which
  the graph itself resizes to 299 x 299 (ResizeBilinear, TF1's legacy form) and computes
  (x - 128) / 128: so [-1, 127/128], not [-1, 1], and the resize comes before the scaling.
  """
  if images.shape[-1] != 3:
    raise ValueError(f"ADM's Inception takes RGB images [B, H, W, 3], got shape {images.shape}")
  return (resize_bilinear_tf1(images, ADM_INCEPTION_SIZE) - 128.0) / 128.0


def embed(forward, batches, what: str) -> dict[str, np.ndarray]:
  """Embeds image batches; keeps features and logits, and the statistics of FID and sFID.

  Args:
    forward: `networks.make_forward` of a network of config.networks: uint8 images ->
      (features, logits[, spatial]).
    batches: uint8 image batches [<= the forward's batch size, H, W, C].
    what: names the images in errors.

  Returns:
    {'features' [N, D], 'logits' [N, K], 'images_shape' [4], 'fid_mu', 'fid_sigma'} and, for
    modules with spatial features, 'sfid_mu', 'sfid_sigma'.
  """
  kept, stats, count, image_shape = {'features': [], 'logits': []}, {}, 0, None
  for images in batches:
    b, image_shape = len(images), images.shape[1:]
    out = dict(zip(('features', 'logits', 'spatial'), forward(images)))
    for name, value in out.items():
      if not np.all(np.isfinite(value)):
        raise ValueError(f'{what}: the network gives non-finite {name} for images '
                                  f'{count}..{count + b - 1}; check the images and checkpoint')
    for metric, name in (('fid', 'features'), ('sfid', 'spatial')):
      if name in out:
        empty = metrics_lib.RunningStats.empty(out[name].shape[1])
        stats[metric] = stats.get(metric, empty).update(out[name])
    for name, parts in kept.items():
      parts.append(out[name])
    count += b
  if count < 2:
    raise ValueError(f'{what}: {count} images; at least 2 are needed')
  result = {name: np.concatenate(parts) for name, parts in kept.items()}
  result['images_shape'] = np.asarray((count,) + image_shape)
  for metric, running in stats.items():
    result[f'{metric}_mu'], result[f'{metric}_sigma'] = running.finalize()
  return result
