"""The sample job: class-balanced images from the EMA parameters of a finished train run.

Draws `sample.num_samples` images (labels cycle through the classes) with classifier-free
guidance, in fixed-seed batches (resumable: a finished batch is a file), and writes

    WORKDIR/samples/NAME/
      parts/part-00000.npz   finished batches
      samples.npz            images uint8 [N, H, W, C], labels int32 [N]
      grid.png               up to 10 samples of up to 10 classes
      samples.json           written last (the "complete" mark), with the sizes and checksums
                             of samples.npz and the parts

A rerun on finished samples whose files are damaged redoes the damaged parts alone (a batch's
images are a function of its seed) and rebuilds samples.npz from the parts. The job holds the
folder's lock while it works, so a second run on it refuses.
"""

import contextlib
import os

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import batching
from gadc_jax import generator
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax import report
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.training import train_state


def _check_config(config: ml_collections.ConfigDict) -> None:
  validation.require(config.sample, 'config.sample', positive_ints=('num_samples', 'batch_size'))
  generator.check_sampler(config.train, config.sample.sampler, 'config.sample.sampler')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  _check_config(config)
  out = layout.samples_dir(workdir, config)
  with artifacts.exclusive(out):
    return _sample(config, workdir, out)


def _sample(config: ml_collections.ConfigDict, workdir: str, out: str) -> dict:
  cfg = config.sample
  inputs = {'train': generator.generator_fingerprint(config, workdir), 'num_samples': cfg.num_samples,
            'batch_size': cfg.batch_size, 'seed': cfg.seed, 'sampler': cfg.sampler.to_dict()}
  expected = artifacts.fingerprint(inputs)
  done = artifacts.finished_or_start(os.path.join(out, 'samples.json'),
                                     os.path.join(out, 'parts', 'inputs.json'), expected,
                                     inputs, 'samples')
  if done is not None:
    # Checksums, not sizes only: a skipped rerun must not leave the evaluate job a file it
    # will refuse.
    damaged = artifacts.damaged_on_rerun(out, done['files'], 'samples')
    if not damaged:
      return done
    for name in damaged:  # a damaged part is sampled again; samples.npz is rebuilt anyway.
      with contextlib.suppress(FileNotFoundError):  # every host removes it.
        os.remove(os.path.join(out, name))

  info = input_pipeline.split_info(config.data, config.train.split)
  labels = np.arange(cfg.num_samples) % info.num_classes
  num_batches = -(-cfg.num_samples // cfg.batch_size)
  parts = [os.path.join('parts', f'part-{b:05d}.npz') for b in range(num_batches)]  # in out
  todo = [(b, part) for b, part in enumerate(parts)
          if not os.path.exists(os.path.join(out, part))]
  if todo:
    _sample_parts(config, workdir, out, todo, labels, info)
  images = np.concatenate([np.load(os.path.join(out, p))['images'] for p in parts])
  final = layout.samples_file(workdir, config)
  artifacts.atomic_write_npz(final, images=images, labels=labels.astype(np.int32))
  per_class = max(1, min(10, cfg.num_samples // info.num_classes))
  rows = [images[labels == c][:per_class] for c in range(min(info.num_classes, 10))]
  report.save_image_grid(rows, os.path.join(out, 'grid.png'))
  summary = {'fingerprint': expected, 'inputs': inputs, 'path': final,
             'num_samples': int(cfg.num_samples),
             'files': artifacts.describe_files(out, [os.path.basename(final)] + parts)}
  artifacts.atomic_write_json(os.path.join(out, 'samples.json'), summary)
  return summary


def _sample_parts(config: ml_collections.ConfigDict, workdir: str, out: str, todo,
                  labels: np.ndarray, info) -> None:
  """Samples the batches `todo` [(index, part path relative to out)] and writes each part;
  Preempted after a part once any host has received SIGTERM."""
  cfg = config.sample
  model, params = generator.restore_generator(config, workdir, info.num_classes,
                                              info.image_shape)
  text_table = generator.load_text_table(config.train, info.num_classes)
  vae = generator.load_vae(config.train) if config.train.space == 'latent' else None
  key = jax.random.PRNGKey(cfg.seed)
  num_batches = -(-cfg.num_samples // cfg.batch_size)
  # Every batch is padded to one size divisible by the devices: one compilation, sharded.
  mesh = train_state.make_mesh()
  size = batching.round_up(cfg.batch_size, mesh.size)
  for b, part in tqdm.tqdm(todo, desc=f'sample {os.path.basename(out)}', unit='batch'):
    y = labels[b * cfg.batch_size:(b + 1) * cfg.batch_size]
    images = batching.padded_call(
        lambda padded, k=jax.random.fold_in(key, b): generator.generate(
            config.train, model, params, padded, k, cfg.sampler, info.num_classes,
            info.image_shape, text_table, vae),
        y, size, train_state.batch_sharding(mesh))
    artifacts.atomic_write_npz(os.path.join(out, part), images=images,
                               labels=y.astype(np.int32))
    preemption.raise_if_agreed(f'after batch {b + 1} of {num_batches} of the sample job ({out})')
