"""Students: augmentation, image sets, and the train_students job on the digits."""

import os

import jax
import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax.data import input_pipeline
from gadc_jax.distill import students


def test_augment_without_shift_or_flip_is_identity():
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
  np.testing.assert_array_equal(students.augment(jax.random.PRNGKey(0), images, 0, False),
                                images)


def test_augment_views_are_edge_padded_shifts_or_mirrors():
  images = np.random.default_rng(1).integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
  views = np.asarray(students.augment(jax.random.PRNGKey(3), images, 2, True))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='edge')
  offsets, mirrored = set(), 0
  for image, view in zip(padded, views):
    matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
               if np.array_equal(view, (image[:, ::-1] if flip else image)[dy:dy + 6,
                                                                           dx:dx + 6])]
    assert matches, 'a view is no shift of its image'
    offsets.add(matches[0][:2])
    mirrored += matches[0][2]
  assert len(offsets) > 3 and 0 < mirrored < 16  # random, not one fixed view.


def _config(digits_workdir):
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  config.networks.student_mlp = {'arch': 'digits_mlp', 'width': 32, 'seed': 5}
  config.train_students = defaults.train_students()
  cfg = config.train_students
  cfg.students = ('student_mlp',)
  cfg.lia.pool = ('selection', 'evaluation')
  cfg.steps = 100
  return config, workdir


@pytest.fixture(scope='module')
def random_selection(digits_workdir):
  config, workdir = digits_workdir
  config = config.copy_and_resolve_references()
  # A name of its own: the session's workdir is shared with the select job's tests.
  config.select.method, config.select.budget = 'random', '5/class'
  config.select.name = 'students-random-5perclass'
  jobs.run('select', config, workdir)
  return 'selection:' + layout.selection_name(config.select)


def test_students_learn_from_a_selection_and_reruns_skip(digits_workdir, random_selection,
                                                         tmp_path, monkeypatch):
  config, workdir = _config(digits_workdir)
  config.train_students.images = random_selection
  config.train_students.name = f'test-{tmp_path.name}'
  record = jobs.run('train_students', config, workdir)
  assert record['ipc'] == 5 and record['num_images'] == 50
  assert record['teachers'] == ['selection']  # IPC 5: the map's entry for IPC 1.
  assert record['top1']['student_mlp'] > 0.5  # chance is 0.1.

  def no_training(*args, **kwargs):
    raise AssertionError('trained again')

  monkeypatch.setattr(students, 'train_student', no_training)
  assert jobs.run('train_students', config, workdir) == record
  config.train_students.otm.beta2 = 0.5
  with pytest.raises(ValueError, match='students fingerprint mismatch'):
    jobs.run('train_students', config, workdir)


def test_soft_labels_once_and_hard_labels(digits_workdir, random_selection, tmp_path):
  config, workdir = _config(digits_workdir)
  cfg = config.train_students
  cfg.images, cfg.steps = random_selection, 20
  cfg.lia.mode, cfg.name = 'once', f'once-{tmp_path.name}'
  cfg.lia.fixed_teachers = 2
  assert jobs.run('train_students', config, workdir)['teachers'] == ['selection', 'evaluation']
  cfg.labels, cfg.name = 'hard', f'hard-{tmp_path.name}'
  record = jobs.run('train_students', config, workdir)
  assert record['teachers'] == [] and record['inputs']['otm'] == {}


def test_distilled_set_is_read_and_checked(digits_workdir, tmp_path):
  config, _ = _config(digits_workdir)
  workdir = str(tmp_path)
  train = input_pipeline.load_split_arrays(config.data, 'train')
  cfg = config.train_students
  cfg.images = 'distilled:made'
  with pytest.raises(FileNotFoundError, match='no finished distilled set'):
    students.load_image_set(config, workdir, cfg.images, 'train', 'here')
  folder = layout.distilled_dir(workdir, 'made')
  artifacts.atomic_write_npz(layout.distilled_file(workdir, 'made'), images=train['image'][:24],
                             labels=np.arange(24, dtype=np.int32) % 12)
  artifacts.atomic_write_json(os.path.join(folder, 'distilled.json'), {'fingerprint': 'x'})
  with pytest.raises(ValueError, match=r'labels span 0..11, the data have 10 classes'):
    students.load_image_set(config, workdir, cfg.images, 'train', 'here')
  artifacts.atomic_write_npz(layout.distilled_file(workdir, 'made'), images=train['image'][:20],
                             labels=train['label'][:20])
  images, labels, description = students.load_image_set(config, workdir, cfg.images, 'train',
                                                        'here')
  np.testing.assert_array_equal(images, train['image'][:20])
  np.testing.assert_array_equal(labels, train['label'][:20])
  assert description['distilled'] == 'made'


@pytest.mark.parametrize('images', ['', 'made', 'other:x', 'selection:'])
def test_bad_image_set_names_are_one_line_errors(images):
  with pytest.raises(ValueError, match='must be distilled:NAME or selection:NAME'):
    students.parse_image_set(images, 'config.train_students.images')
