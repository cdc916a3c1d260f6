"""The export job: a digits selection (the select job's format) as PNG files, a CSV and a split
that tfds.folder_dataset.ImageFolder reads back; links into an image-folder dataset; reruns
and refusals."""

import csv
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import study_cells
from gadc_jax.data import input_pipeline
from gadc_jax.jobs import export
from tests.conftest import digits_config


def _export_config(config, selection, **options):
  config = config.copy_and_resolve_references()
  config.export = defaults.export()
  config.export.selection = selection
  config.export.update(options)
  return config


def write_selection(workdir, name, data_cfg, positions, ids, labels):
  """A finished selection in the select job's format (selection.npz, selection.json) of
  the train split's images at `positions`, labels `labels` [n] (class-sorted)."""
  info = input_pipeline.split_info(data_cfg, 'train')
  folder = os.path.join(workdir, 'selections', name)
  os.makedirs(folder)
  counts = np.bincount(labels, minlength=info.num_classes)
  artifacts.atomic_write_npz(
      os.path.join(folder, 'selection.npz'), offsets=np.concatenate([[0], np.cumsum(counts)]),
      indices=np.zeros(len(positions), np.int64), positions=np.asarray(positions),
      ids=np.asarray(ids).astype(str), labels=np.asarray(labels, np.int32))
  artifacts.atomic_write_json(os.path.join(folder, 'selection.json'), {
      'fingerprint': artifacts.fingerprint({'positions': np.asarray(positions).tolist()}),
      'config': {'split': 'train'},
      'inputs': {'dataset': [info.dataset, info.version, 'train']},
      'artifacts': artifacts.describe_files(folder, ['selection.npz'])})


@pytest.fixture(scope='module')
def selected(tmp_path_factory, tfds_dir):
  """(config, workdir, name) of a random 3/class selection of digits' train split."""
  config = digits_config(tfds_dir)
  workdir = str(tmp_path_factory.mktemp('export'))
  split = input_pipeline.load_split_arrays(config.data, 'train')
  rng = np.random.default_rng(0)
  positions = np.concatenate([rng.choice(np.flatnonzero(split['label'] == c), 3, replace=False)
                              for c in range(10)])
  write_selection(workdir, 'digits-random', config.data, positions,
                  split['id'][positions], split['label'][positions])
  return config, workdir, 'digits-random'


def _read_back(folder):
  """{image file name: (class name, uint8 image [H, W, 3])} of ImageFolder(folder)'s train."""
  builder = tfds.folder_dataset.ImageFolder(folder)
  names = builder.info.features['label'].names
  out = {}
  for ex in builder.as_dataset(split='train', shuffle_files=False).as_numpy_iterator():
    name = os.path.basename(ex['image/filename'].decode())
    out[name] = (names[ex['label']], ex['image'])
  return out


def test_files_export_reads_back_through_tfds(selected):
  config, workdir, name = selected
  record = export.run(_export_config(config, name), workdir)
  out = os.path.join(workdir, 'exports', name)
  with np.load(os.path.join(workdir, 'selections', name, 'selection.npz')) as npz:
    ids, labels, positions = npz['ids'], npz['labels'], npz['positions']
  assert record['num_images'] == len(ids) == 30
  info = input_pipeline.split_info(config.data, 'train')
  with open(os.path.join(out, 'selection.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['id'] for r in rows] == ids.tolist()
  assert [int(r['label']) for r in rows] == labels.tolist()
  assert [r['class_name'] for r in rows] == [info.class_names[l] for l in labels]
  assert [r['path'] for r in rows] == [
      f'train/{info.class_names[l]}/{i}.png' for i, l in zip(ids, labels)]
  assert sorted(os.listdir(os.path.join(out, 'train'))) == sorted(info.class_names)
  # TFDS reads back exactly the selected images, with their classes.
  expected = input_pipeline.read_examples(config.data, 'train', positions)
  assert (expected['label'] == labels).all() and (expected['id'] == ids).all()
  found = _read_back(out)
  assert sorted(found) == sorted(f'{i}.png' for i in ids)
  for image_id, label, image in zip(ids, labels, expected['image']):
    class_name, read = found[f'{image_id}.png']
    assert class_name == info.class_names[label]
    np.testing.assert_array_equal(read, np.broadcast_to(image, read.shape))


def test_rerun_skips_and_other_inputs_are_refused(selected):
  config, workdir, name = selected
  out = os.path.join(workdir, 'exports', name)
  export.run(_export_config(config, name), workdir)
  done = os.path.join(out, 'export.json')
  mtime = os.path.getmtime(done)
  export.run(_export_config(config, name), workdir)
  assert os.path.getmtime(done) == mtime
  # Other inputs (images of another size) into the same folder: refused, nothing rewritten.
  other = _export_config(config, name)
  other.data.image_size = 6
  with pytest.raises(ValueError, match=re.escape(f'{done}: export fingerprint mismatch')):
    export.run(other, workdir)
  assert os.path.getmtime(done) == mtime
  # A folder holding files of somebody else: never written into.
  foreign = os.path.join(workdir, 'mine')
  os.makedirs(foreign)
  open(os.path.join(foreign, 'notes.txt'), 'w').close()
  with pytest.raises(ValueError, match=f'export folder {foreign} exists and holds files'):
    export.run(_export_config(config, name, dir='mine'), workdir)
  assert os.listdir(foreign) == ['notes.txt']


def test_a_cell_names_its_selection(selected):
  config, workdir, name = selected
  artifacts.atomic_write_json(study_cells.cell_path(workdir, 'random-3/class-seed0'),
                              {'cell': 'random-3/class-seed0', 'selection': f'selections/{name}'})
  record = export.run(_export_config(config, 'random-3/class-seed0', mode='links'), workdir)
  # gadc_digits has no image files to link to: PNG files.
  assert record['inputs']['mode'] == 'files'
  out = os.path.join(workdir, 'exports', 'random-3perclass-seed0')
  with open(os.path.join(out, 'selection.csv')) as a, open(
      os.path.join(workdir, 'exports', name, 'selection.csv')) as b:
    assert a.read() == b.read()
  with pytest.raises(FileNotFoundError, match="'nothing' is neither a selection"):
    export.run(_export_config(config, 'nothing'), workdir)
  with pytest.raises(ValueError, match='config.export.mode must be one of files, links'):
    export.run(_export_config(config, name, mode='copy'), workdir)


def test_links_into_an_image_folder_dataset(tmp_path, tfds_dir):
  config = digits_config(tfds_dir)
  root, workdir = tmp_path / 'images', str(tmp_path / 'work')
  rng = np.random.default_rng(0)
  for class_name in ('cat', 'dog'):
    os.makedirs(root / class_name / 'sub')
    for k in range(3):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
          root / class_name / 'sub' / f'img{k}.png')
  config = config.copy_and_resolve_references()
  config.data.name, config.data.folder = 'folder', str(root)
  # Images 0, 2 of cat and 4 of dog (ids are paths relative to the root, sorted).
  write_selection(workdir, 'hand', config.data, [0, 2, 4],
                  ['cat/sub/img0.png', 'cat/sub/img2.png', 'dog/sub/img1.png'], [0, 0, 1])
  record = export.run(_export_config(config, 'hand', mode='links'), workdir)
  assert record['inputs']['mode'] == 'links'
  out = os.path.join(workdir, 'exports', 'hand')
  link = os.path.join(out, 'train', 'cat', 'cat_sub_img2.png')
  assert os.path.islink(link) and os.readlink(link) == str(root / 'cat' / 'sub' / 'img2.png')
  found = _read_back(out)
  assert sorted(found) == ['cat_sub_img0.png', 'cat_sub_img2.png', 'dog_sub_img1.png']
  for name, (class_name, image) in found.items():
    original = np.asarray(Image.open(root / class_name / 'sub' / name.split('_', 2)[2]))
    np.testing.assert_array_equal(image, original)


def test_a_damaged_selection_is_refused(selected):
  config, workdir, name = selected
  npz = os.path.join(workdir, 'selections', name, 'selection.npz')
  saved = open(npz, 'rb').read()
  with open(npz, 'ab') as f:
    f.write(b'x')
  try:
    with pytest.raises(ValueError, match=re.escape(f'{npz} has {len(saved) + 1} bytes')):
      export.run(_export_config(config, name, dir='damaged'), workdir)
  finally:
    with open(npz, 'wb') as f:
      f.write(saved)
  assert not os.path.exists(os.path.join(workdir, 'damaged'))
