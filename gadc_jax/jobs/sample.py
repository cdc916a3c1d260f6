"""The sample job: class-balanced images from the EMA parameters of a finished train run.

Draws `sample.num_samples` images (labels cycle through the classes) with classifier-free
guidance, in fixed-seed batches (resumable: a finished batch is a file), and writes

    WORKDIR/samples/NAME/
      parts/part-00000.npz   finished batches
      samples.npz            images uint8 [N, H, W, C], labels int32 [N]
      grid.png               up to 10 samples of up to 10 classes
      samples.json           written last (the "complete" mark)
"""

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
from gadc_jax.data import input_pipeline
from gadc_jax.training import train_state


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.sample
  generator.check_sampler(config.train, cfg.sampler)
  info = input_pipeline.split_info(config.data, config.train.split)
  model, params, record = generator.restore_ema_params(config, workdir, info.num_classes,
                                                       info.image_shape)
  out = layout.samples_dir(workdir, config)
  inputs = {'train': record['fingerprint'], 'num_samples': cfg.num_samples,
            'batch_size': cfg.batch_size, 'seed': cfg.seed, 'sampler': cfg.sampler.to_dict()}
  expected = artifacts.fingerprint(inputs)
  done = artifacts.finished_or_start(os.path.join(out, 'samples.json'),
                                     os.path.join(out, 'parts', 'inputs.json'), expected,
                                     inputs, 'samples')
  if done is not None:
    logging.info('samples %s already complete; skipping.', out)
    return done

  labels = np.arange(cfg.num_samples) % info.num_classes
  text_table = generator.load_text_table(config.train)
  vae = generator.load_vae(config.train) if config.train.space == 'latent' else None
  key = jax.random.PRNGKey(cfg.seed)
  num_batches = -(-cfg.num_samples // cfg.batch_size)
  parts = [os.path.join(out, 'parts', f'part-{b:05d}.npz') for b in range(num_batches)]
  # Every batch is padded to one size divisible by the devices: one compilation, sharded.
  mesh = train_state.make_mesh()
  size = batching.round_up(cfg.batch_size, mesh.size)
  for b in tqdm.tqdm(range(num_batches), desc=f'sample {os.path.basename(out)}', unit='batch'):
    if os.path.exists(parts[b]):
      continue
    y = labels[b * cfg.batch_size:(b + 1) * cfg.batch_size]
    images = batching.padded_call(
        lambda padded, k=jax.random.fold_in(key, b): generator.generate(
            config.train, model, params, padded, k, cfg.sampler, info.num_classes,
            info.image_shape, text_table, vae),
        y, size, train_state.batch_sharding(mesh))
    artifacts.atomic_write_npz(parts[b], images=images, labels=y.astype(np.int32))
    preemption.raise_if_agreed(f'after batch {b + 1} of {num_batches} of the sample job ({out})')
  images = np.concatenate([np.load(p)['images'] for p in parts])
  final = layout.samples_file(workdir, config)
  artifacts.atomic_write_npz(final, images=images, labels=labels.astype(np.int32))
  per_class = max(1, min(10, cfg.num_samples // info.num_classes))
  rows = [images[labels == c][:per_class] for c in range(min(info.num_classes, 10))]
  report.save_image_grid(rows, os.path.join(out, 'grid.png'))
  summary = {'fingerprint': expected, 'inputs': inputs, 'path': final,
             'num_samples': int(cfg.num_samples)}
  artifacts.atomic_write_json(os.path.join(out, 'samples.json'), summary)
  return summary
