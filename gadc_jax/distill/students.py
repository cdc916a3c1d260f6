"""Students trained from scratch on an image set with OTM and LIA's soft labels.

An image set is 'distilled:NAME' (images.npz of the distill_sample job) or 'selection:NAME'
(real images of a select-job folder). A student is a network of config.networks (arch and
module arguments; its seed is offset by the run's seed); it trains with AdamW on a
warmup-cosine schedule, on random views of the images (optionally random-resized crops, then
shifts and flips), with the OTM loss against soft labels computed once per image or per view
(BatchNorm in train mode); its measure is top-1 accuracy on the real test split.
"""

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.ndimage
import ml_collections
import numpy as np
import optax
import tqdm

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.distill import otm
from gadc_jax.distill import soft_labels
from gadc_jax.training import classifier
from gadc_jax.training import dataset as dataset_lib

IMAGE_SET_KINDS = ('distilled', 'selection')
LABELS = ('soft', 'hard')
LIA_MODES = ('per_view', 'once')


def parse_image_set(spec: str, where: str) -> tuple[str, str]:
  """'distilled:NAME' or 'selection:NAME' -> (kind, NAME); a ValueError naming `where`."""
  kind, sep, name = str(spec).partition(':')
  if not sep or kind not in IMAGE_SET_KINDS or not name:
    raise ValueError(f'{where} must be distilled:NAME or selection:NAME, got {spec!r}')
  return kind, name


def check_config(config: ml_collections.ConfigDict) -> None:
  """config.train_students, checked before any work: one ValueError naming the key."""
  cfg = config.train_students
  where = 'config.train_students'
  validation.require(cfg, where, positive_ints=('steps', 'batch_size'),
                     non_negative_ints=('seed', 'warmup_steps'), positive=('learning_rate',),
                     non_negative=('weight_decay',))
  validation.require(cfg.augment, f'{where}.augment', non_negative_ints=('shift',))
  validation.require_interval(cfg.augment.resized_crop_scale,
                              f'{where}.augment.resized_crop_scale', upper=1.0, may_be_off=True)
  validation.require_interval(cfg.augment.resized_crop_ratio,
                              f'{where}.augment.resized_crop_ratio')
  validation.require(cfg.lia, f'{where}.lia', non_negative_ints=('fixed_teachers',),
                     positive=('temperature',))
  validation.require(cfg.otm, f'{where}.otm', non_negative=('kappa1', 'kappa2', 'beta2'),
                     positive=('temperature', 'epsilon'), positive_ints=('iterations',))
  if cfg.labels not in LABELS:
    raise ValueError(f'{where}.labels must be one of {", ".join(LABELS)}, got {cfg.labels!r}')
  if cfg.lia.mode not in LIA_MODES:
    raise ValueError(f'{where}.lia.mode must be one of {", ".join(LIA_MODES)}, got '
                     f'{cfg.lia.mode!r}')
  if not cfg.students:
    raise ValueError(f'{where}.students names no network')
  parse_image_set(cfg.images, f'{where}.images')
  networks.check_use(config, f'{where}.students', cfg.students,
                     [(f'{where}.{k}', cfg[k]) for k in ('split', 'eval_split')])
  if cfg.labels == 'soft':
    networks.check_use(config, f'{where}.lia.pool', cfg.lia.pool)


def students_name(cfg) -> str:
  kind, name = parse_image_set(cfg.images, 'config.train_students.images')
  return cfg.name or f'{kind}-{name}-{cfg.labels}'


def load_image_set(config, workdir: str, spec: str, split: str, where: str
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(images uint8 [N, H, W, C], labels int32 [N], description for fingerprints) of an image
  set, checked against config.data's class count and image shape."""
  kind, name = parse_image_set(spec, where)
  info = input_pipeline.split_info(config.data, split)
  if kind == 'selection':
    dataset = [info.dataset, info.version, info.split]
    positions, labels, fingerprint = dataset_lib.read_selection(workdir, name, dataset)
    images = input_pipeline.read_examples(config.data, split, positions)['image']
    description = {'selection': name, 'fingerprint': fingerprint}
  else:
    folder = layout.distilled_dir(workdir, name)
    if not os.path.exists(os.path.join(folder, 'distilled.json')):
      raise FileNotFoundError(f'{where}: no finished distilled set at {folder} (no '
                              'distilled.json); run the distill_sample job first')
    path = layout.distilled_file(workdir, name)
    with np.load(path) as z:
      images, labels = z['images'], z['labels']
    description = {'distilled': name, 'fingerprint': artifacts.file_fingerprint(path)}
  labels = np.asarray(labels, np.int32)
  if images.shape[1:] != tuple(info.image_shape) or images.dtype != np.uint8:
    raise ValueError(f'{where} {spec}: images are {images.dtype} {images.shape[1:]}, the data '
                     f'are uint8 {tuple(info.image_shape)}')
  if len(labels) == 0 or labels.min() < 0 or labels.max() >= info.num_classes:
    raise ValueError(f'{where} {spec}: labels span {labels.min() if len(labels) else "-"}..'
                     f'{labels.max() if len(labels) else "-"}, the data have '
                     f'{info.num_classes} classes')
  return images, labels, description


def images_per_class(labels: np.ndarray, num_classes: int) -> int:
  """The IPC of a labelled set: its largest class."""
  return int(np.bincount(labels, minlength=num_classes).max())


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How random views of the training images are made (config.train_students.augment).

  resized_crop_scale: () (off) or the (min, max) fraction of the image's area of a
  random-resized crop, whose aspect ratio (width / height) lies in resized_crop_ratio; shift:
  pixels of random shift (0: off); flip: mirror left-right with probability 1/2.
  """
  shift: int = 0
  flip: bool = False
  resized_crop_scale: tuple[float, ...] = ()
  resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


def resized_crop_boxes(key: jax.Array, num: int, height: int, width: int,
                       scale: tuple[float, float], ratio: tuple[float, float],
                       attempts: int = 10) -> jnp.ndarray:
  """int32 [num, 4] boxes (top, left, box height, box width) inside a height x width image,
  drawn as torchvision's RandomResizedCrop draws them.

  A box has an area of a fraction U(scale) of the image and an aspect ratio (width / height)
  log-uniform in `ratio`, sides rounded to pixels, at a uniform position; of `attempts`
  draws the first that fits the image is kept; when none fits, the box is the largest
  centred one whose ratio lies in `ratio`.
  """
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(area_key, (num, attempts), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (num, attempts), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  fits = (box_h >= 1) & (box_h <= height) & (box_w >= 1) & (box_w <= width)
  first = jnp.argmax(fits, axis=1)[:, None]
  image_ratio = width / height
  if image_ratio < ratio[0]:
    fallback_h, fallback_w = round(width / ratio[0]), width
  elif image_ratio > ratio[1]:
    fallback_h, fallback_w = height, round(height * ratio[1])
  else:
    fallback_h, fallback_w = height, width
  any_fits = fits.any(axis=1)
  box_h = jnp.where(any_fits, jnp.take_along_axis(box_h, first, 1)[:, 0], fallback_h)
  box_w = jnp.where(any_fits, jnp.take_along_axis(box_w, first, 1)[:, 0], fallback_w)
  # randint's maxval is exclusive: the + 1 lets a box touch the far edge.
  top = jnp.where(any_fits, jax.random.randint(top_key, (num,), 0, height - box_h + 1),
                  (height - fallback_h) // 2)
  left = jnp.where(any_fits, jax.random.randint(left_key, (num,), 0, width - box_w + 1),
                   (width - fallback_w) // 2)
  return jnp.stack([top, left, box_h, box_w], axis=1)


def crop_and_resize(images: jnp.ndarray, boxes: jnp.ndarray) -> jnp.ndarray:
  """images [B, H, W, C] and boxes int [B, 4] (top, left, box height, box width) -> float32
  [B, H, W, C]: each image's box resized bilinearly to H x W as torchvision's resized_crop
  does it (the box cut out first, so pixels outside it never mix in)."""
  b, h, w, c = images.shape

  def centres(start, size, out):
    # Output pixel i covers [i, i + 1) * size / out of the box; its centre, clamped to the
    # box's first and last pixel centres.
    return start + jnp.clip((jnp.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)

  def crop(image, box):
    grid = jnp.meshgrid(centres(box[0], box[2], h), centres(box[1], box[3], w),
                        indexing='ij')
    resample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, grid, order=1)
    return jax.vmap(resample, in_axes=2, out_axes=2)(image)

  return jax.vmap(crop)(images.astype(jnp.float32), boxes.astype(jnp.float32))


def augment(key: jax.Array, images: jnp.ndarray, augmentation: Augmentation) -> jnp.ndarray:
  """uint8 images [B, H, W, C] -> random views: with a resized_crop_scale, a random-resized
  crop of each; then each shifted by up to `shift` pixels in each direction (edge padding,
  then a random crop of the original size) and, with `flip`, mirrored left-right with
  probability 1/2."""
  b, h, w, c = images.shape
  # The first two keys are those of split(key): views without the crop are as they were.
  shift_key, flip_key, crop_key = jax.random.split(key, 3)
  if augmentation.resized_crop_scale:
    boxes = resized_crop_boxes(crop_key, b, h, w, augmentation.resized_crop_scale,
                               augmentation.resized_crop_ratio)
    views = crop_and_resize(images, boxes)
    images = jnp.clip(jnp.round(views), 0, 255).astype(jnp.uint8)
  shift = augmentation.shift
  if shift:
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode='edge')
    offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * shift + 1)
    images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  if augmentation.flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (b,))
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
  return images


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a student trains (hashable: it is part of the jitted step's static arguments).

  augmentation: how the views of the images are made.
  hard_only: CE to the hard labels alone (the hard-label rows); else OTM with `weights`
  (kappa1, kappa2, beta2, temperature, epsilon, iterations) against soft labels, made per
  view by `labeler` (soft_labels.make_labeler's function) when it is set, else given once.
  """
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  warmup_steps: int
  augmentation: Augmentation
  hard_only: bool
  weights: tuple[tuple[str, float], ...]
  labeler: soft_labels.Labeler | None = None


@functools.lru_cache(maxsize=None)
def _optimizer(recipe: Recipe) -> optax.GradientTransformation:
  """AdamW on a warmup-cosine schedule (one object per recipe, so steps compile once)."""
  warmup = min(recipe.warmup_steps, recipe.steps - 1)
  schedule = (optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, warmup,
                                                 recipe.steps) if warmup > 0 else
              optax.cosine_decay_schedule(recipe.learning_rate, recipe.steps))
  return optax.adamw(schedule, weight_decay=recipe.weight_decay)


def _student_loss(variables, model, batch, key, *, recipe: Recipe):
  images = augment(key, batch['image'], recipe.augmentation)
  (_, logits), stats = classifier.train_apply(model, variables, networks.to_unit_range(images))
  if recipe.hard_only:
    weights = {'kappa1': 1.0, 'kappa2': 0.0, 'beta2': 0.0}
  else:
    weights = dict(recipe.weights)
  soft = (recipe.labeler(batch['teachers'], images) if recipe.labeler is not None
          else batch['soft'])
  loss, metrics = otm.otm_loss(logits, batch['label'], soft, **weights)
  return loss, (metrics, stats)


@functools.lru_cache(maxsize=None)
def _loss_fn(recipe: Recipe):
  return functools.partial(_student_loss, recipe=recipe)


def train_student(model, recipe: Recipe, seed: int, images: np.ndarray, labels: np.ndarray,
                  soft: np.ndarray | None = None, teachers: Any = None,
                  desc: str = 'student') -> tuple[Any, float]:
  """Trains `model` from scratch -> (variables, running statistics included; last loss).

  images uint8 [N, H, W, C], labels [N]; soft [N, K] when the recipe's labels are given once;
  teachers: the labeler's variables when they are made per view. A batch is min(batch_size,
  N) images drawn without replacement each step. (One jitted step per iteration: XLA:CPU runs
  the same steps inside a fori_loop several times slower.)
  """
  tx, loss_fn = _optimizer(recipe), _loss_fn(recipe)
  state = classifier.init_state(model, tx, seed, images.shape[1:])
  if soft is None:
    soft = np.zeros((len(labels), 1), np.float32)  # unread: hard labels or per-view labels.
  rng = np.random.default_rng(seed)
  step_key = jax.random.PRNGKey(seed)
  batch_size = min(recipe.batch_size, len(labels))
  loss = jnp.zeros(())
  for step in tqdm.trange(recipe.steps, desc=desc, leave=False, mininterval=10):
    idx = rng.choice(len(labels), batch_size, replace=False)
    batch = {'image': images[idx], 'label': labels[idx], 'soft': soft[idx],
             'teachers': teachers}
    state, loss, _ = classifier.train_step(state, batch, jax.random.fold_in(step_key, step),
                                           model=model, tx=tx, loss_fn=loss_fn)
  return state['params'], float(loss)
