"""Input pipelines for the jobs: TFDS image-classification datasets and plain image folders.

Every source reads as examples {'id': str, 'label': int, 'image': uint8 [H, W, C]} in a fixed
order, preprocessed with ADM's centre crop to `image_size`:
  - a TFDS dataset (`gadc_digits`, built offline on first use; `imagenet2012` from its manual
    download; any other only when prepared already or with `download=True`). The id is the
    dataset's 'id' feature, else its 'file_name', else TFDS's own `tfds_id`.
  - a folder root/<class_name>/.../<image file>: classes are the sorted subfolder names, the
    id is the path relative to root, images are read with PIL as RGB, the one split is
    'train' and its order is the sorted ids.

The data config (`config.data`, see `gadc_jax.defaults.data`) has the fields
  name:       'gadc_digits' | another TFDS name | 'folder'.
  data_dir:   TFDS data dir; '' is TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  manual_dir: folder with a manual download (imagenet2012's two tar files).
  folder:     root of the image folder (name 'folder').
  image_size: side of the square images after preprocessing.
  download:   whether a TFDS dataset that is not prepared may be downloaded.
"""

import hashlib
import os
import re
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow as tf
import tensorflow_datasets as tfds

from gadc_jax.data import gadc_digits  # Registers the `gadc_digits` builder.
# pylint: enable=g-import-not-at-top,g-bad-import-order

FOLDER = 'folder'
FOLDER_SPLIT = 'train'
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.ppm', '.tif', '.tiff',
                    '.webp')
# TFDS image features that identify an example, in order of preference.
_ID_FEATURES = ('id', 'file_name')


def _hide_gpus_from_tf() -> None:
  """Keeps TF on the CPU so that it never takes accelerator memory meant for JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TF's devices are already initialised (elsewhere, by the same rule).


_hide_gpus_from_tf()


class SplitInfo(NamedTuple):
  """What a split holds; `image_shape` is (H, W, C) after preprocessing."""
  dataset: str
  version: str
  split: str
  num_examples: int
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]


# ----------------------------------------------------------------------------------------
# ADM centre crop and host sharding.


def adm_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ADM's `center_crop_arr`: uint8 [H, W, C] -> uint8 [size, size, C].

  Halves the image with a box filter while its short side is at least 2 * size (cheap and
  alias-free), resizes it bicubically so the short side is `size`, then crops the centre.
  An image that is already size x size is returned unchanged.
  """
  image = np.asarray(image)
  if image.shape[:2] == (size, size):
    return image
  # PIL keeps one-channel images as 2-D mode 'L'.
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(side // 2 for side in pil.size), resample=Image.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(round(side * scale) for side in pil.size), resample=Image.BICUBIC)
  out = np.asarray(pil).reshape(pil.size[1], pil.size[0], image.shape[-1])
  top = (out.shape[0] - size) // 2
  left = (out.shape[1] - size) // 2
  return out[top:top + size, left:left + size]


def host_shard(num_items: int, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> range:
  """This host's contiguous, disjoint slice of `num_items`; the slices cover all items.

  Defaults to `jax.process_index()` of `jax.process_count()`; sizes differ by at most one.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return range(num_items * index // count, num_items * (index + 1) // count)


# ----------------------------------------------------------------------------------------
# Sources. A source gives undecoded records {'id', 'label', 'image'} (encoded bytes for TFDS,
# a file path for a folder) plus the function that decodes 'image' to uint8 [H, W, C].


class _Folder(NamedTuple):
  root: str
  class_names: tuple[str, ...]
  ids: tuple[str, ...]  # Sorted paths relative to root, '/'-separated.
  labels: np.ndarray  # int64 [N]


def _check_positive(what: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f'{what} must be a positive integer, got {value!r}')
  return value


def _check_config(data_cfg: ml_collections.ConfigDict) -> int:
  """Returns the image size after checking it."""
  return _check_positive('data.image_size', data_cfg.image_size)


def _open(data_cfg: ml_collections.ConfigDict):
  """A prepared TFDS builder, or a listed `_Folder`."""
  if data_cfg.name == FOLDER:
    return _list_folder(data_cfg.folder)
  return _tfds_builder(data_cfg)


def _tfds_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of `data_cfg.name`, prepared (offline where possible) or a ValueError."""
  name = data_cfg.name
  data_dir = os.path.expanduser(data_cfg.data_dir) if data_cfg.data_dir else None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'unknown dataset {name!r}: not a TFDS dataset; use gadc_digits, imagenet2012, '
        f'another TFDS name, or folder (with data.folder)') from None
  if builder.is_prepared():
    return builder
  if jax.process_index() != 0:
    return _prepared_by_process_zero(name, data_dir)
  # Where it looked, e.g. ~/tensorflow_datasets/imagenet2012/5.1.0.
  where = os.fspath(builder.data_dir)
  download_config = tfds.download.DownloadConfig(try_download_gcs=False)
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    manual_dir = os.path.expanduser(data_cfg.manual_dir) if data_cfg.manual_dir else ''
    if not manual_dir:
      raise ValueError(
          f'{name} is not prepared in {where} and needs a manual download: set '
          f'--config.data.manual_dir to the folder holding its files (for imagenet2012: '
          f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)')
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f'data.manual_dir {manual_dir} does not exist or is not a folder')
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False)
  elif name != gadc_digits.GadcDigits.name and not data_cfg.download:
    raise ValueError(
        f'{name} is not prepared in {where}; set --config.data.download=True to download '
        f'and prepare it, or --config.data.data_dir to where it is prepared')
  builder.download_and_prepare(download_config=download_config)
  return builder


# How long other processes wait for process 0 to prepare a dataset (ImageNet takes hours).
PREPARE_TIMEOUT_S = 6 * 3600


def _prepared_by_process_zero(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder once process 0 has prepared it: processes preparing one data_dir at once
  would race for its final folder. A wait, not a collective: process 0 may build it inside
  any job, and a collective would need every process to ask at the same point."""
  deadline = time.monotonic() + PREPARE_TIMEOUT_S
  logging.info('waiting for process 0 to prepare %s', name)
  while time.monotonic() < deadline:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      return builder
    time.sleep(2.0)
  raise TimeoutError(f'{name} was not prepared by process 0 in {os.fspath(builder.data_dir)} '
                     f'within {PREPARE_TIMEOUT_S} s; see process 0\'s log')


def _list_folder(root: str) -> _Folder:
  """Lists root/<class>/.../<image file> in sorted order, or a ValueError."""
  if not root:
    raise ValueError('data.name is folder but data.folder is empty; set --config.data.folder')
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'image folder {root} does not exist or is not a folder')
  class_names = tuple(sorted(
      entry.name for entry in os.scandir(root)
      if entry.is_dir() and not entry.name.startswith('.')))
  if not class_names:
    raise ValueError(f'image folder {root} is empty: it needs one subfolder per class')
  ids, labels = [], []
  for label, class_name in enumerate(class_names):
    found = len(ids)
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, class_name)):
      dirnames[:] = [d for d in dirnames if not d.startswith('.')]
      rel = os.path.relpath(dirpath, root).replace(os.sep, '/')
      for filename in filenames:
        if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith('.'):
          ids.append(f'{rel}/{filename}')
          labels.append(label)
    if len(ids) == found:
      # Every class needs images: an empty one would shift or drop class indices later.
      raise ValueError(
          f'class folder {os.path.join(root, class_name)} has no image files '
          f'({", ".join(IMAGE_EXTENSIONS)}); add images or remove the folder')
  order = sorted(range(len(ids)), key=ids.__getitem__)
  return _Folder(root, class_names, tuple(ids[i] for i in order),
                 np.asarray(labels, np.int64)[order])


def _folder_version(folder: _Folder) -> str:
  """Hash of every file's id, size and mtime (ns), in order: new pixels under an old name
  change it, so features of the old images are not reused. Not a hash of the content: at
  ImageNet scale (1.28M files, ~140 GB) that would read the whole dataset on every run,
  where one stat per file costs seconds; as for make or rsync, a rewrite that keeps both
  size and mtime (e.g. `cp -p` of another image of the same size) goes unnoticed."""
  h = hashlib.sha256()
  for i in folder.ids:
    st = os.stat(os.path.join(folder.root, i))
    h.update(f'{i}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]


class UnreadableImage(ValueError):
  """An image file that cannot be decoded; named apart so that it can be found again in the
  TF error that wraps it when it is raised inside a tf.numpy_function."""


def _read_image(path: str) -> np.ndarray:
  """An image file as uint8 [H, W, 3], or an UnreadableImage naming the file."""
  try:
    with Image.open(path) as pil:
      return np.asarray(pil.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImage(f'cannot read image {path}: {e}') from None


def _check_split(source, split: str) -> int:
  """The number of examples in `split`, or a ValueError naming the known splits."""
  if isinstance(source, _Folder):
    splits = {FOLDER_SPLIT: len(source.ids)}
  else:
    splits = {name: info.num_examples for name, info in source.info.splits.items()}
  if split not in splits:
    hint = ''
    if isinstance(source, _Folder):
      hint = (f'; an image folder is the one split {FOLDER_SPLIT!r}: set the setting that '
              f'asks for {split!r} to {FOLDER_SPLIT}, e.g. --config.classifier.eval_split='
              f"{FOLDER_SPLIT} (its default is 'test')")
    raise ValueError(
        f'unknown split {split!r} of {_dataset_name(source)}; it has {sorted(splits)}{hint}')
  return splits[split]


def _dataset_name(source) -> str:
  return FOLDER if isinstance(source, _Folder) else source.info.name


def _check_features(builder: tfds.core.DatasetBuilder) -> None:
  features = builder.info.features
  if not isinstance(features, tfds.features.FeaturesDict) or not {
      'image', 'label'} <= set(features.keys()):
    raise ValueError(
        f'{builder.info.name} is not an image-classification dataset: it needs features '
        f"'image' and 'label'")


def _records(source, split: str, start: int, end: int
             ) -> tuple[tf.data.Dataset, Callable[[tf.Tensor], tf.Tensor]]:
  """Undecoded records of examples [start, end) of `split`, in order, and the image decoder."""
  if isinstance(source, _Folder):
    paths = [os.path.join(source.root, i) for i in source.ids[start:end]]
    ds = tf.data.Dataset.from_tensor_slices({
        'id': tf.constant(source.ids[start:end], tf.string),
        'label': source.labels[start:end],
        'image': tf.constant(paths, tf.string),
    })
    return ds, _decode_file
  return _tfds_records(source, f'{split}[{start}:{end}]')


def _tfds_records(source: tfds.core.DatasetBuilder, split_spec
                  ) -> tuple[tf.data.Dataset, Callable[[tf.Tensor], tf.Tensor]]:
  """`_records` of a TFDS split spec (a string or a tfds.core.ReadInstruction)."""
  _check_features(source)
  read_config = tfds.ReadConfig(add_tfds_id=True)
  ds = source.as_dataset(
      split=split_spec, shuffle_files=False,
      read_config=read_config, decoders={'image': tfds.decode.SkipDecoding()})
  features = source.info.features
  id_key = next((k for k in _ID_FEATURES if k in features), 'tfds_id')
  ds = ds.map(lambda ex: {'id': ex[id_key], 'label': ex['label'], 'image': ex['image']})
  return ds, features['image'].decode_example


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  image = tf.numpy_function(lambda p: _read_image(p.decode()), [path], tf.uint8,
                            stateful=False)
  image.set_shape((None, None, 3))
  return image


def _decode_and_crop(ds: tf.data.Dataset, decode: Callable[[tf.Tensor], tf.Tensor],
                     size: int) -> tf.data.Dataset:
  """Records -> examples with uint8 [size, size, C] images, in the same order."""

  def crop(image: tf.Tensor) -> tf.Tensor:
    out = tf.numpy_function(lambda x: adm_center_crop(x, size), [image], tf.uint8,
                            stateful=False)
    out.set_shape((size, size, image.shape[-1]))
    return out

  return ds.map(lambda ex: {**ex, 'image': crop(decode(ex['image']))},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Batched examples as numpy: id str [b], label int32 [b], image uint8 [b, H, W, C]."""
  batches = ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
  while True:
    # The yield stays outside the try: closing the generator must not run the handler.
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      # An UnreadableImage raised inside a tf.numpy_function reaches us wrapped in a TF error.
      match = re.search(r'UnreadableImage: ([^\n]*)', e.message)
      if match is None:
        raise
      raise UnreadableImage(match.group(1)) from None
    yield {
        'id': np.asarray([i.decode() for i in batch['id']]),
        'label': batch['label'].astype(np.int32),
        'image': batch['image'],
    }


# ----------------------------------------------------------------------------------------
# The API the jobs use.


def split_info(data_cfg: ml_collections.ConfigDict, split: str) -> SplitInfo:
  """Describes `split`; prepares `gadc_digits` (offline) when it is missing.

  The version of a folder is a hash of its sorted file list with each file's size and
  modification time (`_folder_version`), so it changes when files are added, removed,
  renamed or rewritten.
  """
  size = _check_config(data_cfg)
  source = _open(data_cfg)
  num_examples = _check_split(source, split)
  if isinstance(source, _Folder):
    version = _folder_version(source)
    return SplitInfo(FOLDER, version, split, num_examples, len(source.class_names),
                     source.class_names, (size, size, 3))
  _check_features(source)
  features = source.info.features
  channels = features['image'].shape[-1] or 3
  return SplitInfo(source.info.name, str(source.info.version), split, num_examples,
                   features['label'].num_classes, tuple(features['label'].names),
                   (size, size, channels))


def iterate_batches(data_cfg: ml_collections.ConfigDict, split: str, batch_size: int,
                    start: int = 0, end: Optional[int] = None
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Preprocessed batches of examples [start, end) of `split`, in the split's fixed order.

  Only that slice is read, so a resumed or per-host shard costs only its own examples.

  Yields:
    {'id': str [b], 'label': int32 [b], 'image': uint8 [b, S, S, C]}, S = image_size; the
    last batch may be short.
  """
  size = _check_config(data_cfg)
  _check_positive('batch_size', batch_size)
  source = _open(data_cfg)
  num_examples = _check_split(source, split)
  end = num_examples if end is None else end
  if not 0 <= start <= end <= num_examples:
    raise ValueError(
        f'example range [{start}, {end}) is outside split {split!r} of '
        f'{_dataset_name(source)} ({num_examples} examples)')
  if start == end:
    return
  ds, decode = _records(source, split, start, end)
  yield from _numpy_batches(_decode_and_crop(ds, decode, size).batch(batch_size))


def read_examples(data_cfg: ml_collections.ConfigDict, split: str,
                  positions) -> dict[str, np.ndarray]:
  """The preprocessed examples at `positions` of `split` (in that order), read in one pass.

  Only those examples are read (TFDS reads one slice per position), so a few images of
  ImageNet (e.g. for a grid of a selection) cost a few reads, not a scan of the split.
  """
  size = _check_config(data_cfg)
  source = _open(data_cfg)
  num_examples = _check_split(source, split)
  positions = np.asarray(positions, np.int64)
  if positions.size and not (0 <= positions.min() and positions.max() < num_examples):
    raise ValueError(f'positions outside split {split!r} of {_dataset_name(source)} '
                    f'({num_examples} examples)')
  order = np.argsort(positions, kind='stable')
  if isinstance(source, _Folder):
    ids = [source.ids[p] for p in positions[order]]
    ds = tf.data.Dataset.from_tensor_slices({
        'id': tf.constant(ids, tf.string),
        'label': source.labels[positions[order]],
        'image': tf.constant([os.path.join(source.root, i) for i in ids], tf.string),
    })
    decode = _decode_file
  else:
    spec = sum((tfds.core.ReadInstruction(split, from_=int(p), to=int(p) + 1, unit='abs')
                for p in positions[order][1:]),
               tfds.core.ReadInstruction(split, from_=int(positions[order][0]),
                                         to=int(positions[order][0]) + 1, unit='abs'))
    ds, decode = _tfds_records(source, spec)
  batch = next(_numpy_batches(_decode_and_crop(ds, decode, size).batch(len(positions))))
  inverse = np.empty_like(order)
  inverse[order] = np.arange(len(order))
  return {k: v[inverse] for k, v in batch.items()}


def load_split_arrays(data_cfg: ml_collections.ConfigDict, split: str,
                      batch_size: int = 1024) -> dict[str, np.ndarray]:
  """A whole (small) split in memory: id str [N], label int32 [N], image uint8 [N, S, S, C]."""
  info = split_info(data_cfg, split)
  batches = list(iterate_batches(data_cfg, split, batch_size))
  if not batches:
    return {'id': np.zeros([0], str), 'label': np.zeros([0], np.int32),
            'image': np.zeros((0, *info.image_shape), np.uint8)}
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
