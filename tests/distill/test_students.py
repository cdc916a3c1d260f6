"""Students: augmentation, image sets, ResNet students (train-mode BatchNorm), and the
train_students job on the digits."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import encoders
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax.data import input_pipeline
from gadc_jax.distill import students


def test_augment_without_shift_or_flip_is_identity():
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
  np.testing.assert_array_equal(
      students.augment(jax.random.PRNGKey(0), images, students.Augmentation()), images)


def test_augment_views_are_edge_padded_shifts_or_mirrors():
  images = np.random.default_rng(1).integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
  views = np.asarray(students.augment(jax.random.PRNGKey(3), images,
                                      students.Augmentation(shift=2, flip=True)))
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


def test_resized_crop_of_the_whole_image_is_identity():
  images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  whole = students.Augmentation(resized_crop_scale=(1.0, 1.0), resized_crop_ratio=(1.0, 1.0))
  views = np.asarray(students.augment(jax.random.PRNGKey(0), images, whole), np.int32)
  assert np.abs(views - images).max() <= 1  # bilinear resampling, rounded to uint8.


# With (0.25, 0.5) of a 32 x 32 image every first draw fits, so areas are U(scale): mean 0.375.
@pytest.mark.parametrize('scale, height, width, mean_area',
                         [((0.08, 1.0), 32, 24, None), ((0.25, 0.5), 32, 32, 0.375)])
def test_resized_crop_boxes_lie_inside_and_follow_the_scale(scale, height, width, mean_area):
  ratio = (3 / 4, 4 / 3)
  boxes = np.asarray(students.resized_crop_boxes(jax.random.PRNGKey(1), 4000, height, width,
                                                 scale, ratio))
  top, left, box_h, box_w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (box_h >= 1).all() and (box_w >= 1).all()
  assert (top + box_h <= height).all() and (left + box_w <= width).all()
  # Sides are rounded to pixels: the area and ratio asked for are met up to half a pixel.
  area = box_h * box_w / (height * width)
  slack = (0.5 * (box_h + box_w) + 0.25) / (height * width)
  assert (area >= scale[0] - slack).all() and (area <= scale[1] + slack).all()
  assert ((box_w + 0.5) / (box_h - 0.5) >= ratio[0]).all()
  assert ((box_w - 0.5) / (box_h + 0.5) <= ratio[1]).all()
  # Spread over the range, not one size: near both ends on many draws.
  span = scale[1] - scale[0]
  assert area.min() < scale[0] + 0.05 * span and area.max() > scale[1] - 0.05 * span
  assert len({(t, l) for t, l in zip(top, left)}) > 50
  if mean_area is not None:
    assert abs(area.mean() - mean_area) < 0.01


def test_resized_crops_differ_between_keys():
  images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  crop = students.Augmentation(resized_crop_scale=(0.08, 1.0))
  keys = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  boxes = [students.resized_crop_boxes(k, 8, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3)) for k in keys]
  assert not np.array_equal(*boxes)
  views = [students.augment(k, images, crop) for k in keys]
  assert not np.array_equal(*views)


def test_crop_and_resize_matches_torchvision():
  torch = pytest.importorskip('torch')
  functional = pytest.importorskip('torchvision.transforms.functional')
  images = np.random.default_rng(4).uniform(0, 255, (3, 20, 16, 2)).astype(np.float32)
  boxes = np.array([[0, 0, 20, 16], [3, 5, 7, 9], [10, 1, 10, 15]], np.int32)
  views = np.asarray(students.crop_and_resize(images, boxes))
  for image, (top, left, h, w), view in zip(images, boxes, views):
    expected = functional.resized_crop(
        torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0), int(top), int(left), int(h),
        int(w), [20, 16], functional.InterpolationMode.BILINEAR, antialias=False)
    np.testing.assert_allclose(view, expected[0].numpy().transpose(1, 2, 0), atol=1e-3)


@pytest.mark.parametrize('key, value', [
    ('resized_crop_scale', (0.0, 1.0)), ('resized_crop_scale', (0.5, 0.2)),
    ('resized_crop_scale', (0.5, 1.5)), ('resized_crop_scale', (0.5,)),
    ('resized_crop_ratio', ()), ('resized_crop_ratio', (4 / 3, 3 / 4)),
    ('resized_crop_ratio', (0.0, 1.0)), ('resized_crop_ratio', (1.0, float('inf')))])
def test_bad_resized_crop_is_a_one_line_error_naming_the_key(key, value):
  config = ml_collections.ConfigDict({'train_students': defaults.train_students()})
  config.train_students.augment[key] = value
  with pytest.raises(ValueError, match=f'config.train_students.augment.{key} must be') as e:
    students.check_config(config)
  assert '\n' not in str(e.value)


def test_resnet_student_trains_its_batchnorm():
  model = encoders.build('resnet18', 10)
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  recipe = students.Recipe(
      steps=3, batch_size=4, learning_rate=1e-3, weight_decay=0.01, warmup_steps=0,
      augmentation=students.Augmentation(flip=True, resized_crop_scale=(0.08, 1.0)),
      hard_only=True, weights=())
  variables, loss = students.train_student(model, recipe, 0, images, labels)
  assert np.isfinite(loss)
  # Fresh running statistics are means 0 and variances 1: train-mode steps moved them all.
  stats = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
  assert len(stats) == 2 * 20  # the 20 BatchNorm layers of a ResNet-18.
  for path, leaf in stats:
    assert not np.allclose(leaf, 0.0 if path[-1].key == 'mean' else 1.0), path
  # Evaluation uses the running statistics: an image's logits do not depend on its batch.
  others = rng.integers(0, 256, images.shape, dtype=np.uint8)
  others[0] = images[0]
  logits = jax.jit(lambda batch: model.apply(variables, networks.to_unit_range(batch))[1])
  np.testing.assert_allclose(logits(images)[0], logits(others)[0], atol=1e-5)


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
  # The crop is off: the augmentation is recorded as before it existed.
  assert record['inputs']['augment'] == {'shift': 1, 'flip': False}

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
