"""The train job: a DiT (Gaussian diffusion) or SiT (transport) on a selection or a split.

    WORKDIR/train/NAME/
      inputs.json          what the run trains on and with (fingerprint checked on resume)
      data.npz             the training set in model space (pixels in [-1, 1], or SD-VAE
                           latent moments), with labels; built once
      checkpoints/         orbax: every `checkpoint_every` steps, at the end and on SIGTERM;
                           the latest two are kept, and those at multiples of `keep_every`
      events.out.tfevents  CLU metrics: loss terms and gradient norm averaged over each
                           `log_every` steps, steps/s, images/s
      grid-STEP.png        periodic EMA sample grids, a row per class
      train.json           written when the last step is done, with the sizes and checksums
                           of the final checkpoint's files

Batches are a pure function of (seed, step), and the noise keys are folded with the step, so
a killed run resumes to the same parameters as an uninterrupted one. On SIGTERM every host
checkpoints the same step and the job raises Preempted (main.py exits 143). A run whose final
checkpoint is missing or damaged is not finished: the job removes it and redoes the steps
after the latest checkpoint left, to the same parameters. The job holds the folder's lock
while it works, so a second run on it refuses.
"""

import os
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import generator
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import repa_targets
from gadc_jax import report
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.diffusion import gaussian
from gadc_jax.diffusion import transport as transport_lib
from gadc_jax.models import dit as dit_lib
from gadc_jax.training import checkpoints
from gadc_jax.training import dataset as dataset_lib
from gadc_jax.training import loss as loss_lib
from gadc_jax.training import train_state


def _check_config(cfg) -> None:
  """Every value of config.train that a run would otherwise find wrong late (or never)."""
  validation.require(cfg, 'config.train',
                     positive_ints=('steps', 'batch_size', 'log_every', 'checkpoint_every',
                                    'grid_per_class', 'fsdp'),
                     non_negative_ints=('sample_every', 'keep_every'),
                     positive=('learning_rate',), non_negative=('weight_decay', 'grad_clip'),
                     fractions=('ema_decay', 'class_dropout'))
  validation.require(cfg.repa, 'config.train.repa', non_negative=('weight',))
  if cfg.weights:
    raise ValueError(f'config.train.weights is set ({cfg.weights}): the sample jobs use that '
                     'published generator as it is, and the train job trains from scratch; '
                     'unset it to train')
  if cfg.keep_every % cfg.checkpoint_every:
    raise ValueError(f'config.train.keep_every ({cfg.keep_every}) must be a multiple of '
                     f'config.train.checkpoint_every ({cfg.checkpoint_every})')
  generator.check_space(cfg)
  # An unknown policy or attention is named before anything is built.
  dit_lib.block_class(cfg.remat)
  dit_lib.resolve_attention(cfg.attention, jnp.float32)
  if cfg.space == 'latent':
    validation.require(cfg.vae, 'config.train.vae', positive=('scale',))
  generator.check_sampler(cfg, cfg.sampler, 'config.train.sampler')
  if cfg.repa.features and not cfg.model_overrides.get('repa_depth', 0):
    raise ValueError('config.train.repa.features is set but the model has no REPA head: set '
                     'config.train.model_overrides.repa_depth (e.g. 8)')


def _inputs(config, description: dict, image_shape) -> dict:
  cfg = config.train
  keys = ('model', 'model_overrides', 'space', 'steps', 'batch_size', 'learning_rate',
          'weight_decay', 'grad_clip', 'ema_decay', 'class_dropout', 'flip', 'seed',
          'bfloat16', 'transport_path', 'text_embeddings', 'repa')
  inputs = {k: cfg[k].to_dict() if hasattr(cfg[k], 'to_dict') else cfg[k] for k in keys}
  inputs.update(description, image_shape=list(image_shape))
  if cfg.space == 'latent':
    inputs['vae'] = cfg.vae.to_dict()
  if cfg.text_embeddings:  # the file's bytes, so a table replaced at the same path is refused.
    inputs['text_embeddings_file'] = artifacts.file_fingerprint(cfg.text_embeddings)
  return inputs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.train
  _check_config(cfg)
  if cfg.repa.features:
    networks.check_use(config, 'config.train.repa.features', [cfg.repa.features])
  sit = generator.family(cfg) == 'SiT'
  # Built before any work: they check the transport path and that fsdp divides the devices.
  transport = transport_lib.create_transport(cfg.transport_path) if sit else None
  mesh = train_state.make_mesh(cfg.fsdp)
  out = layout.train_dir(workdir, config)
  with artifacts.exclusive(out):
    return _train(config, workdir, out, mesh, transport)


def _train(config: ml_collections.ConfigDict, workdir: str, out: str, mesh,
           transport) -> dict:
  cfg = config.train
  info = input_pipeline.split_info(config.data, cfg.split)
  positions, labels, description = dataset_lib.training_positions(config, workdir)
  # Refused here, before any work, when made for other images or another network.
  targets = repa_targets.open_targets(config, workdir) if cfg.repa.features else None
  if targets is not None:
    description['repa_targets'] = targets.fingerprint
  shape = generator.model_space_shape(cfg, info.image_shape)
  # Checked now rather than at the first sample grid.
  generator.guided_channels(cfg, cfg.sampler, shape[-1], 'config.train.sampler')
  inputs = _inputs(config, description, shape)
  expected = artifacts.fingerprint(inputs)
  done_path = os.path.join(out, 'train.json')
  record = artifacts.finished_or_start(done_path, os.path.join(out, 'inputs.json'), expected,
                                       inputs, 'training run')
  ckpt = checkpoints.Checkpointer(os.path.join(out, 'checkpoints'), keep_every=cfg.keep_every)
  if record is not None:
    try:
      ckpt.verify(record['step'], record['checkpoint'])
      logging.info('training %s already finished; skipping.', out)
      return record
    except (FileNotFoundError, ValueError) as e:
      # Not finished after all: redo the steps after the latest checkpoint left.
      logging.warning('training %s is not finished: %s; redoing its last steps.', out, e)
    if jax.process_index() == 0:
      os.remove(done_path)
    ckpt.delete(record['step'])

  vae = generator.load_vae(cfg) if cfg.space == 'latent' else None
  text_table = generator.load_text_table(cfg, info.num_classes)
  model = generator.build_model(cfg, info.num_classes, text_table)
  # The patch must divide the image; fail before any work rather than inside the step.
  jax.eval_shape(lambda: generator.init_params(model, jax.random.PRNGKey(0), shape, text_table))
  data_path = os.path.join(out, 'data.npz')
  if os.path.exists(data_path):
    data = dataset_lib.load(data_path)
  else:
    data = dataset_lib.build_training_set(config, positions, labels, vae,
                                          targets.load() if targets else None)
    if jax.process_index() == 0:
      dataset_lib.save(data_path, data)
  logging.info('training %s on %d images %s', cfg.model, len(data.labels), data.x.shape[1:])

  tx = train_state.optimizer(cfg.learning_rate, cfg.weight_decay, cfg.grad_clip)
  # Separate streams: the model's init and per-step noise, the batches, the flips.
  key, batch_key, flip_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
  init = lambda: train_state.create(
      generator.init_params(model, key, shape, text_table), tx)
  shardings = train_state.param_sharding(mesh, jax.eval_shape(init))
  if ckpt.latest_step is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(init), shardings)
    state = ckpt.restore(abstract)
    logging.info('resuming %s at step %d', out, int(state.step))
  else:
    state = jax.jit(init, out_shardings=shardings)()

  diffusion = None if transport else gaussian.create_diffusion()
  step_fn = train_state.make_train_step(
      loss_lib.make_loss_fn(model, cfg, diffusion, transport, text_table), tx, cfg.ema_decay,
      mesh, shardings)
  global_sharding = train_state.batch_sharding(mesh)
  writer = metric_writers.create_default_writer(out, just_logging=jax.process_index() > 0)
  start = int(state.step)
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.steps, writer=writer)
  t0, last_logged = time.time(), start
  summed = None  # the metrics summed on the device since the last log, as DiT's running_loss.
  for step in range(start, cfg.steps):
    idx = train_state.batch_indices(batch_key, step, len(data.labels), cfg.batch_size)
    flips = jax.random.fold_in(flip_key, step) if cfg.flip else None
    local = dataset_lib.host_batch(data, idx, flips)
    batch = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(global_sharding, a), local)
    state, metrics = step_fn(state, batch, key)
    summed = metrics if summed is None else jax.tree.map(jnp.add, summed, metrics)
    progress(step + 1)
    if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
      seconds, steps = time.time() - t0, step + 1 - last_logged
      scalars = {k: float(v) / steps for k, v in summed.items()}
      scalars['steps_per_sec'] = steps / seconds
      scalars['images_per_sec'] = scalars['steps_per_sec'] * cfg.batch_size
      writer.write_scalars(step + 1, scalars)
      t0, last_logged, summed = time.time(), step + 1, None
    stop = preemption.stop_agreed()
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
      ckpt.save(step + 1, state)
    if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
      _write_grid(cfg, model, state.ema_params, info, text_table, vae, out, step + 1)
    if stop:
      ckpt.wait()
      raise preemption.preempted(f'at step {step + 1} of the train job ({out})')
  ckpt.wait()
  writer.flush()
  if not cfg.sample_every or cfg.steps % cfg.sample_every:
    _write_grid(cfg, model, state.ema_params, info, text_table, vae, out, cfg.steps)
  record = {'fingerprint': expected, 'inputs': inputs, 'step': cfg.steps,
            'ema_fingerprint': artifacts.array_fingerprint(state.ema_params),
            'num_images': int(len(data.labels))}
  if jax.process_index() == 0:  # the one host that reads the checkpoint's files back.
    record['checkpoint'] = ckpt.describe(cfg.steps)
    artifacts.atomic_write_json(done_path, record)
  return record


def _write_grid(cfg, model, params, info, text_table, vae, out: str, step: int) -> None:
  """EMA samples of up to 10 classes, grid_per_class each, as grid-STEP.png."""
  labels = np.repeat(np.arange(min(info.num_classes, 10)), cfg.grid_per_class)
  images = generator.generate(cfg, model, params, labels, jax.random.PRNGKey(cfg.seed + 2),
                              cfg.sampler, info.num_classes, info.image_shape, text_table, vae)
  if jax.process_index() == 0:
    rows = np.split(images, len(images) // cfg.grid_per_class)
    report.save_image_grid(rows, os.path.join(out, f'grid-{step:07d}.png'))
