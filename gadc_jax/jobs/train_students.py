"""The train_students job: students trained from scratch on an image set, top-1 on real data.

Reads the image set config.train_students.images ('distilled:NAME' of the distill_sample job
or 'selection:NAME' of the select job), labels it with LIA's teachers (the first k of
train_students.lia.pool, k from its IPC) unless labels = 'hard', trains each network of
train_students.students from scratch with the OTM loss and writes
WORKDIR/students/NAME/students.json: top-1 accuracy of each on the real eval split, the
teachers used, the IPC, seconds, and the fingerprint of every input. A finished folder is
skipped; one made from other inputs is refused. Students train in seconds to minutes and keep
no checkpoints: an interrupted run trains them again.
"""

import os
import time

from absl import logging
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import encoders
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax.data import input_pipeline
from gadc_jax.distill import soft_labels
from gadc_jax.distill import students as students_lib
from gadc_jax.training import classifier

_TRAINING = ('labels', 'split', 'eval_split', 'seed', 'steps', 'batch_size', 'learning_rate',
             'weight_decay', 'warmup_steps')


def _recipe(cfg, labeler) -> students_lib.Recipe:
  return students_lib.Recipe(
      steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=float(cfg.learning_rate),
      weight_decay=float(cfg.weight_decay), warmup_steps=cfg.warmup_steps,
      augmentation=students_lib.Augmentation(
          shift=cfg.augment.shift, flip=bool(cfg.augment.flip),
          resized_crop_scale=tuple(float(v) for v in cfg.augment.resized_crop_scale),
          resized_crop_ratio=tuple(float(v) for v in cfg.augment.resized_crop_ratio)),
      hard_only=cfg.labels == 'hard',
      weights=tuple(sorted((k, float(v) if k != 'iterations' else int(v))
                           for k, v in cfg.otm.items())),
      labeler=labeler)


def _augment_inputs(augment) -> dict:
  """What of config.train_students.augment the students depend on: the crop's settings only
  when it is on, so the records of students trained without it stay valid."""
  settings = augment.to_dict()
  if not augment.resized_crop_scale:
    del settings['resized_crop_scale'], settings['resized_crop_ratio']
  return settings


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the students (or returns the finished record)."""
  students_lib.check_config(config)
  cfg = config.train_students
  where = 'config.train_students'
  start = time.time()
  images, labels, image_set = students_lib.load_image_set(config, workdir, cfg.images,
                                                          cfg.split, f'{where}.images')
  info = input_pipeline.split_info(config.data, cfg.eval_split)
  ipc = students_lib.images_per_class(labels, info.num_classes)
  teachers = ()
  if cfg.labels == 'soft':
    teachers = soft_labels.choose_teachers(cfg.lia.pool, cfg.lia.teachers_per_ipc, ipc,
                                           cfg.lia.fixed_teachers, f'{where}.lia')
  inputs = {
      'images': image_set,
      'eval': [info.dataset, info.version, info.split, info.num_examples],
      'students': {n: networks.settings(config.networks[n]) for n in cfg.students},
      'teachers': {n: networks.network_record(config, workdir, n)['params_fingerprint']
                   for n in teachers},
      'training': {k: cfg[k] for k in _TRAINING},
      'augment': _augment_inputs(cfg.augment),
      'lia': {k: cfg.lia[k] for k in ('temperature', 'mode')} if teachers else {},
      'otm': cfg.otm.to_dict() if teachers else {},
  }
  out = layout.students_dir(workdir, students_lib.students_name(cfg))
  with artifacts.exclusive(out):
    expected = artifacts.fingerprint(inputs)
    record = artifacts.finished_or_start(os.path.join(out, 'students.json'),
                                         os.path.join(out, 'inputs.json'), expected, inputs,
                                         'students')
    if record is not None:
      logging.info('students %s already trained; skipping.', out)
      return record
    soft, labeler, teacher_vars = None, None, None
    if teachers:
      label, teacher_vars = soft_labels.make_labeler(config, workdir, teachers,
                                                     cfg.lia.temperature)
      if cfg.lia.mode == 'per_view':
        labeler = label
      else:
        soft = np.concatenate([np.asarray(label(teacher_vars, images[i:i + 256]))
                               for i in range(0, len(images), 256)])
    recipe = _recipe(cfg, labeler)
    test = input_pipeline.load_split_arrays(config.data, cfg.eval_split)
    top1 = {}
    for i, name in enumerate(cfg.students):
      net_cfg = config.networks[name]
      model = encoders.build(net_cfg.arch, info.num_classes, **networks.module_kwargs(net_cfg))
      seed = 1000 * cfg.seed + int(net_cfg.get('seed', i))
      params, loss = students_lib.train_student(model, recipe, seed, images, labels, soft,
                                                teacher_vars, desc=f'student {name}')
      top1[name] = classifier.accuracy(model, params, test['image'], test['label'])
      logging.info('student %s on %s: top-1 %.4f (last loss %.4f)', name, cfg.images,
                   top1[name], loss)
    record = {'fingerprint': expected, 'inputs': inputs, 'top1': top1, 'ipc': ipc,
              'teachers': list(teachers), 'num_images': int(len(labels)),
              'seconds': time.time() - start}
    artifacts.atomic_write_json(os.path.join(out, 'students.json'), record)
  return record
