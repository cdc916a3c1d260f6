"""A selection as files any codebase reads: an image folder, a CSV, a TFDS ImageFolder split.

    EXPORT/train/CLASS/FILE      one sub-folder per class (its name in the dataset); FILE is
                                 the example id made file-safe, as a PNG of the image as the
                                 pipeline reads it (centre crop, data.image_size), or a link
                                 to the original file of an image-folder dataset
    EXPORT/selection.csv         id, label, class_name, path (relative to EXPORT)
    EXPORT/export.json           fingerprint of the inputs; written last ("finished")

`tfds.folder_dataset.ImageFolder(EXPORT)` reads EXPORT/train as split 'train'; it numbers the
classes in the sorted order of their folder names, which selection.csv maps to the dataset's
labels by class name.
"""

import csv
import io
import os
import re
from typing import NamedTuple

import numpy as np
from PIL import Image

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import study_cells

MODES = ('files', 'links')
# The extensions tfds.folder_dataset.ImageFolder reads; a link to another kind of file
# would drop out of the TFDS split, so such an image is written as a PNG instead.
TFDS_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLIT = 'train'


class Selected(NamedTuple):
  """A finished selection: its folder, selection.json, and per image (in class order)
  positions in its split [n], ids [n] str and labels [n] int."""
  folder: str
  record: dict
  positions: np.ndarray
  ids: np.ndarray
  labels: np.ndarray


def find_selection(workdir: str, name: str) -> str:
  """The folder of selection `name`: WORKDIR/selections/NAME, else the selection of cell
  NAME (WORKDIR/cells/NAME/cell.json); a FileNotFoundError naming both places."""
  if not name:
    raise ValueError('config.export.selection is empty: name a folder of WORKDIR/selections '
                     'or a cell of WORKDIR/cells')
  folder = layout.selection_dir(workdir, name)
  if os.path.isdir(folder):
    return folder
  cell_path = study_cells.cell_path(workdir, name)
  if not os.path.exists(cell_path):
    raise FileNotFoundError(f'config.export.selection {name!r} is neither a selection '
                            f'({folder}) nor a cell ({cell_path})')
  cell = artifacts.read_json(cell_path)
  if not cell.get('selection'):
    raise ValueError(f'{cell_path} records no selection (its cell trained on none)')
  return layout.resolve(workdir, cell['selection'])


def load_selection(folder: str) -> Selected:
  """A finished selection of the select job, its files checked against selection.json."""
  path = os.path.join(folder, 'selection.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: the selection is not finished; run the '
                            'select job')
  record = artifacts.read_json(path)
  if 'selection.npz' not in record.get('artifacts', {}):
    raise ValueError(f'{path} records no checksum of selection.npz (an older version wrote '
                     'it); run the select job again')
  artifacts.verify_files(folder, {'selection.npz': record['artifacts']['selection.npz']},
                         f'selection {folder}')
  with np.load(os.path.join(folder, 'selection.npz')) as npz:
    return Selected(folder, record, npz['positions'], npz['ids'], npz['labels'])


def file_stem(text: str) -> str:
  """An id or class name as one file-name part: its image extension dropped, path
  separators and other characters outside [A-Za-z0-9._-] as '_'."""
  root, ext = os.path.splitext(text)
  if ext.lower() in TFDS_IMAGE_EXTENSIONS + ('.bmp', '.gif', '.ppm', '.tif', '.tiff', '.webp'):
    text = root
  return re.sub(r'[^A-Za-z0-9._-]', '_', text).lstrip('.') or '_'


def relative_paths(ids, labels, class_names, link_sources=None) -> list[str]:
  """'train/CLASS/FILE' of each image: FILE is file_stem(id) + '.png', or, where
  `link_sources` gives the image's original file, + that file's extension. A ValueError
  when two ids would share a file."""
  paths = []
  for i, (image_id, label) in enumerate(zip(ids, labels)):
    ext = '.png'
    if link_sources is not None and link_sources[i] is not None:
      ext = os.path.splitext(link_sources[i])[1].lower()
    paths.append(f'{SPLIT}/{file_stem(class_names[label])}/{file_stem(str(image_id))}{ext}')
  if len(set(paths)) != len(paths):
    seen = {}
    for image_id, path in zip(ids, paths):
      if path in seen:
        raise ValueError(f'ids {seen[path]!r} and {image_id!r} would both be exported as {path}')
      seen[path] = image_id
  if len({file_stem(n) for n in class_names}) != len(class_names):
    raise ValueError(f'class names {list(class_names)} do not give distinct folder names')
  return paths


def selection_csv(ids, labels, class_names, paths) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['id', 'label', 'class_name', 'path'])
  for image_id, label, path in zip(ids, labels, paths):
    writer.writerow([str(image_id), int(label), class_names[label], path])
  return out.getvalue()


def write_png(path: str, image: np.ndarray) -> None:
  """uint8 [H, W, C] as a PNG (C = 1: greyscale), atomically."""
  with artifacts.atomic_path(path) as tmp:
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format='PNG')


def write_link(path: str, target: str) -> None:
  """A symbolic link at `path` to the absolute `target`, replacing any file there."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-link'
  if os.path.lexists(tmp):
    os.remove(tmp)
  os.symlink(os.path.abspath(target), tmp)
  os.replace(tmp, path)
