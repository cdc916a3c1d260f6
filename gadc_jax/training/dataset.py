"""The training set of a diffusion run, in model space, and its per-step batches.

The images a run trains on (a selection, or a whole split) are read once and put in model
space: pixels in [-1, 1], or the SD-VAE posterior moments of each image (a fresh latent is
drawn from them every step, as DiT trains). Batches are a function of (seed, step) alone.
"""

import math
import os
from typing import NamedTuple

import jax
import numpy as np

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax.data import input_pipeline


class TrainingSet(NamedTuple):
  """The training images in model space. x: [N, h, w, c] (pixels in [-1, 1]) or, for
  latents, the SD-VAE posterior moments `mean` and `logvar`; labels [N] int32; repa: the
  REPA targets [N, tokens, width] float16 (widened to float32 per batch) or None."""
  x: np.ndarray
  logvar: np.ndarray | None
  labels: np.ndarray
  repa: np.ndarray | None


def training_positions(config, workdir: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(positions in the split, labels, description) of the images to train on."""
  cfg = config.train
  info = input_pipeline.split_info(config.data, cfg.split)
  dataset = [info.dataset, info.version, info.split]
  selection = layout.trained_selection(config)
  if not selection:  # the whole split (it is held in memory: meant for small sets).
    labels = input_pipeline.load_split_arrays(config.data, cfg.split)['label']
    return np.arange(info.num_examples), labels, {'dataset': dataset}
  positions, labels, fingerprint = read_selection(workdir, selection, dataset)
  return positions, labels, {'dataset': dataset, 'selection': fingerprint}


def read_selection(workdir: str, name: str, dataset: list) -> tuple[np.ndarray, np.ndarray, str]:
  """(positions in the split [n], labels [n], fingerprint) of selection folder `name`,
  checked to be whole and made on `dataset` ([name, version, split] of split_info)."""
  folder = layout.selection_dir(workdir, name)
  summary = artifacts.read_json(os.path.join(folder, 'selection.json'))
  if summary['inputs'].get('dataset') != dataset:
    raise ValueError(
        f'selection {folder} was made on {summary["inputs"].get("dataset")}, but config.data '
        f'and the split read give {dataset}')
  _verify_selection(folder, summary)
  with np.load(os.path.join(folder, 'selection.npz')) as z:
    positions, labels = z['positions'], z['labels']
  return positions, labels, summary['fingerprint']


def _verify_selection(folder: str, summary: dict) -> None:
  """A ValueError, naming the content fingerprint recorded and the one found, unless
  selection.npz is the file selection.json recorded: a swapped one would train on another
  selection under this one's fingerprint, a truncated one end in a BadZipFile."""
  recorded = summary.get('artifacts', {}).get('selection.npz')
  if recorded is None:
    raise ValueError(f'{folder}/selection.json records no checksum of selection.npz (an '
                     'older version wrote it); remove the folder and run the select job again')
  path = os.path.join(folder, 'selection.npz')
  found = artifacts.file_fingerprint(path)  # small: ids and positions of the selection.
  if found != recorded['sha256'] or os.path.getsize(path) != recorded['size']:
    raise ValueError(
        f'{path} has content {found} ({os.path.getsize(path)} bytes), not the '
        f'{recorded["sha256"]} ({recorded["size"]} bytes) that selection.json records: it '
        'was replaced or damaged since; run the select job again, which rebuilds it from '
        'the class files')


def build_training_set(config, positions: np.ndarray, labels: np.ndarray, vae=None,
                       repa: np.ndarray | None = None) -> TrainingSet:
  """Reads the images once and puts them in model space (encoding latents in batches);
  `repa` is the images' REPA targets [N, tokens, width] (repa_targets.RepaTargets.load)."""
  cfg = config.train
  xs, logvars = [], []
  chunk = 256
  for i in range(0, len(positions), chunk):
    images = input_pipeline.read_examples(config.data, cfg.split, positions[i:i + chunk])
    pixels = np.asarray(networks.to_unit_range(images['image']))
    if vae is None:
      xs.append(pixels)
    else:
      model, params = vae
      mean, logvar = jax.jit(lambda p, x: model.apply(p, x, method='encode'))(params, pixels)
      xs.append(np.asarray(mean))
      logvars.append(np.asarray(logvar))
  return TrainingSet(np.concatenate(xs), np.concatenate(logvars) if logvars else None,
                     np.asarray(labels, np.int32), repa)


def save(path: str, data: TrainingSet) -> None:
  """Writes a training set as .npz (atomically), so that a resumed run reads it back."""
  extra = {k: v for k, v in (('logvar', data.logvar), ('repa', data.repa)) if v is not None}
  artifacts.atomic_write_npz(path, x=data.x, labels=data.labels, **extra)


def load(path: str) -> TrainingSet:
  with np.load(path) as z:
    return TrainingSet(z['x'], z['logvar'] if 'logvar' in z.files else None, z['labels'],
                       z['repa'] if 'repa' in z.files else None)


def mirror_token_grid(tokens: np.ndarray, height: int, width: int) -> np.ndarray:
  """The patch tokens [B, N, D] of [height, width] images -> those of the mirrored images.

  The tokens are a row-major grid with the images' aspect ratio (rows / cols = height /
  width, as DiT's patches and a ViT's); mirroring an image left-right reverses each row.
  """
  n = tokens.shape[1]
  cols = round(math.sqrt(n * width / height))
  rows = n // max(cols, 1)
  if rows * cols != n or rows * width != cols * height:
    raise ValueError(f'{n} REPA tokens do not form a grid of the images\' aspect ratio '
                     f'{height}x{width}')
  grid = tokens.reshape(tokens.shape[0], rows, cols, *tokens.shape[2:])
  return grid[:, :, ::-1].reshape(tokens.shape)


def host_batch(data: TrainingSet, idx: np.ndarray, flip_key: jax.Array | None) -> dict:
  """This host's rows of a global batch `idx` (hosts take equal contiguous slices).

  With a flip key, each image is mirrored left-right with probability 1/2, and so is its
  REPA token grid: the targets stay those of the image the model sees.
  """
  rows = input_pipeline.host_shard(len(idx))
  idx = idx[rows.start:rows.stop]
  batch = {'x': data.x[idx], 'y': data.labels[idx]}
  for name in ('logvar', 'repa'):
    if getattr(data, name) is not None:  # REPA targets are kept float16.
      batch[name] = np.asarray(getattr(data, name)[idx], np.float32)
  if flip_key is not None:
    flip = np.asarray(jax.random.bernoulli(flip_key, 0.5, (len(idx),)))
    for k in ('x', 'logvar'):
      if k in batch:
        batch[k] = np.where(flip[:, None, None, None], batch[k][:, :, ::-1], batch[k])
    if 'repa' in batch:
      mirrored = mirror_token_grid(batch['repa'], *data.x.shape[1:3])
      batch['repa'] = np.where(flip[:, None, None], mirrored, batch['repa'])
  return batch
