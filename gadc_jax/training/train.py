"""The train job: a DiT (Gaussian diffusion) or SiT (transport) on a selection or a split.

    WORKDIR/train/NAME/
      inputs.json          what the run trains on and with (fingerprint checked on resume)
      data.npz             the training set in model space (pixels in [-1, 1], or SD-VAE
                           latent moments), with labels; built once
      checkpoints/         orbax: every `checkpoint_every` steps, at the end and on SIGTERM
      events.out.tfevents  CLU metrics: loss terms, steps/s, images/s
      grid-STEP.png        periodic EMA sample grids, a row per class
      train.json           written when the last step is done

Batches are a pure function of (seed, step), and the noise keys are folded with the step, so
a killed run resumes to the same parameters as an uninterrupted one.
"""

import os
import time
from typing import Any, NamedTuple

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gadc_jax import artifacts
from gadc_jax.data import input_pipeline
from gadc_jax.diffusion import gaussian
from gadc_jax.diffusion import transport as transport_lib
from gadc_jax.models import dit as dit_lib
from gadc_jax.models import vae as vae_lib
from gadc_jax.training import checkpoints
from gadc_jax.training import train_state


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': '',                # output folder; '' = MODEL-SELECTION (or MODEL-SPLIT).
      'model': 'DiT-S/2',        # a name of models.dit.DIT_CONFIGS: DiT-* or SiT-*.
      'model_overrides': ml_collections.ConfigDict(),  # e.g. depth / hidden / heads.
      # A folder of WORKDIR/selections; '@select' is the one config.select writes; '' trains
      # on the whole split.
      'selection': '',
      'split': 'train',
      'space': 'pixel',          # 'pixel' or 'latent' (SD-VAE).
      'vae': ml_collections.ConfigDict({
          'checkpoint': '',      # diffusers AutoencoderKL weights (a local file).
          'channels': (128, 256, 512, 512),
          'scale': vae_lib.LATENT_SCALE,
      }),
      'steps': 2000,
      'batch_size': 64,          # global batch.
      'learning_rate': 1e-4,
      'weight_decay': 0.0,
      'ema_decay': 0.9999,
      'class_dropout': 0.1,
      'flip': False,
      'seed': 0,
      'fsdp': 1,                 # size of the "fsdp" mesh axis (1: data parallel only).
      'bfloat16': False,
      'transport_path': 'linear',  # SiT only.
      'log_every': 100,
      'checkpoint_every': 1000,
      'sample_every': 0,         # 0: a grid at the end only.
      'grid_per_class': 8,
      'sampler': sampler_config(),
      # D2C's Attach (a): per-class text embeddings, a .npy [num_classes, tokens, width].
      'text_embeddings': '',
      # D2C's Attach (b), REPA: align the tokens after block model_overrides.repa_depth to
      # precomputed encoder patch features, a .npy [num_examples_of_split, tokens, width]
      # (e.g. DINOv2-B patch tokens), by negative cosine similarity with this weight.
      'repa': ml_collections.ConfigDict({'features': '', 'weight': 0.5}),
  })


def sampler_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'method': 'ddpm',          # DiT: ddpm | ddim; SiT: ode | sde.
      'steps': 250,
      'cfg_scale': 1.5,
      'guided_channels': 0,      # 0: every noise/velocity channel (3 reproduces DiT's release).
  })


class TrainingSet(NamedTuple):
  """The training images in model space. x: [N, h, w, c] (pixels in [-1, 1]) or, for
  latents, the SD-VAE posterior moments `mean` and `logvar`; labels [N] int32; repa: the
  REPA targets [N, tokens, width] or None."""
  x: np.ndarray
  logvar: np.ndarray | None
  labels: np.ndarray
  repa: np.ndarray | None


def selection_name(config) -> str:
  """The selection folder config.train trains on ('' for the whole split)."""
  if config.train.selection == '@select':
    from gadc_jax.selection import select_job  # pylint: disable=g-import-not-at-top
    return select_job.run_name(config.select)
  return config.train.selection


def run_name(config) -> str:
  cfg = config.train
  return cfg.name or f'{cfg.model.replace("/", "_")}-{selection_name(config) or cfg.split}'


def run_dir(workdir: str, config) -> str:
  return os.path.join(workdir, 'train', run_name(config))


def load_text_table(cfg) -> np.ndarray | None:
  """The per-class text embeddings [num_classes, tokens, width] of config.train, or None."""
  if not cfg.text_embeddings:
    return None
  if not os.path.exists(cfg.text_embeddings):
    raise artifacts.UserError(f'text embeddings file {cfg.text_embeddings} does not exist')
  table = np.load(cfg.text_embeddings).astype(np.float32)
  if table.ndim != 3:
    raise artifacts.UserError(f'{cfg.text_embeddings} has shape {table.shape}; expected '
                              '[num_classes, tokens, width]')
  return table


def build_model(cfg, num_classes: int, text_table: np.ndarray | None = None) -> dit_lib.DiT:
  text = {} if text_table is None else {'text_tokens': text_table.shape[1],
                                        'text_dim': text_table.shape[2]}
  return dit_lib.make_dit(cfg.model, num_classes=num_classes,
                          class_dropout_prob=cfg.class_dropout,
                          dtype=jnp.bfloat16 if cfg.bfloat16 else jnp.float32,
                          **cfg.model_overrides.to_dict(), **text)


def is_sit(cfg) -> bool:
  return cfg.model.startswith('SiT')


def training_positions(config, workdir: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(positions in the split, labels, description) of the images to train on."""
  cfg = config.train
  info = input_pipeline.split_info(config.data, cfg.split)
  dataset = [info.dataset, info.version, info.split]
  selection = selection_name(config)
  if not selection:  # the whole split (it is held in memory: meant for small sets).
    labels = input_pipeline.load_split_arrays(config.data, cfg.split)['label']
    return np.arange(info.num_examples), labels, {'dataset': dataset}
  folder = os.path.join(workdir, 'selections', selection)
  summary = artifacts.read_json(os.path.join(folder, 'selection.json'))
  if summary['inputs'].get('dataset') != dataset:
    raise artifacts.UserError(
        f'selection {folder} was made on {summary["inputs"].get("dataset")}, but config.data '
        f'and config.train.split give {dataset}')
  with np.load(os.path.join(folder, 'selection.npz')) as z:
    positions, labels = z['positions'], z['labels']
  return positions, labels, {'dataset': dataset, 'selection': summary['fingerprint']}


def load_vae(cfg):
  model = vae_lib.AutoencoderKL(channels=tuple(cfg.vae.channels))
  if not cfg.vae.checkpoint:
    raise artifacts.UserError('config.train.space is latent: set config.train.vae.checkpoint '
                              'to a local diffusers AutoencoderKL weights file')
  from gadc_jax.models import convert  # pylint: disable=g-import-not-at-top
  params = convert.vae_from_diffusers(convert.load_torch_state_dict(cfg.vae.checkpoint), model)
  return model, params


def build_training_set(config, positions: np.ndarray, labels: np.ndarray,
                       vae=None) -> TrainingSet:
  """Reads the images once and puts them in model space (encoding latents in batches)."""
  cfg = config.train
  xs, logvars = [], []
  chunk = 256
  for i in range(0, len(positions), chunk):
    images = input_pipeline.read_examples(config.data, cfg.split, positions[i:i + chunk])
    pixels = images['image'].astype(np.float32) / 127.5 - 1.0
    if vae is None:
      xs.append(pixels)
    else:
      model, params = vae
      mean, logvar = jax.jit(lambda p, x: model.apply(p, x, method='encode'))(params, pixels)
      xs.append(np.asarray(mean))
      logvars.append(np.asarray(logvar))
  repa = None
  if cfg.repa.features:
    if not os.path.exists(cfg.repa.features):
      raise artifacts.UserError(f'REPA features file {cfg.repa.features} does not exist')
    repa = np.asarray(np.load(cfg.repa.features, mmap_mode='r')[positions], np.float32)
  return TrainingSet(np.concatenate(xs), np.concatenate(logvars) if logvars else None,
                     np.asarray(labels, np.int32), repa)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The examples of a step: a function of (seed, step) alone, so resuming repeats it."""
  rng = np.random.default_rng([seed, step])
  return rng.choice(num_examples, batch_size, replace=batch_size > num_examples)


def host_batch(data: TrainingSet, idx: np.ndarray, flip_key: jax.Array | None) -> dict:
  """This host's rows of a global batch `idx` (hosts take equal contiguous slices)."""
  rows = input_pipeline.host_shard(len(idx))
  idx = idx[rows.start:rows.stop]
  batch = {'x': data.x[idx], 'y': data.labels[idx]}
  for name in ('logvar', 'repa'):
    if getattr(data, name) is not None:
      batch[name] = getattr(data, name)[idx]
  if flip_key is not None:
    flip = np.asarray(jax.random.bernoulli(flip_key, 0.5, (len(idx),)))
    for k in ('x', 'logvar'):
      if k in batch:
        batch[k] = np.where(flip[:, None, None, None], batch[k][:, :, ::-1], batch[k])
  return batch


def make_loss_fn(model: dit_lib.DiT, cfg, diffusion, transport, text_table=None):
  """loss_fn(params, batch, key) -> (loss, metrics) for DiT (diffusion) or SiT (transport),
  plus the weighted REPA term when the batch carries REPA targets."""

  def loss_fn(params, batch, key):
    k_latent, k_drop, k_t, k_loss = jax.random.split(key, 4)
    x = batch['x']
    if 'logvar' in batch:  # a fresh draw from the VAE posterior, as DiT trains.
      x = vae_lib.sample_latents(k_latent, x, batch['logvar']) * cfg.vae.scale
    drop = jax.random.bernoulli(k_drop, cfg.class_dropout, batch['y'].shape)
    extras = {}

    def model_fn(xt, t):
      out = model.apply(params, xt, t, batch['y'], train=True, drop_labels=drop,
                        text_table=text_table)
      if isinstance(out, tuple):  # the REPA projection rides along with the prediction.
        out, extras['repa'] = out[0], out[1]['repa']
      return out

    if transport is not None:
      terms = transport.training_losses(model_fn, x, k_loss)
      metrics = {}
    else:
      t = jax.random.randint(k_t, (x.shape[0],), 0, diffusion.num_timesteps)
      terms = diffusion.training_losses(model_fn, x, t, k_loss)
      metrics = {'mse': jnp.mean(terms['mse']), 'vb': jnp.mean(terms['vb'])}
    loss = jnp.mean(terms['loss'])
    if 'repa' in batch:
      metrics['repa'] = dit_lib.repa_loss(extras['repa'], batch['repa'])
      loss = loss + cfg.repa.weight * metrics['repa']
    return loss, metrics

  return loss_fn


def optimizer(cfg) -> optax.GradientTransformation:
  return optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)


def init_state(model, tx, key, image_shape, text_table=None) -> train_state.TrainState:
  x = jnp.zeros((1,) + tuple(image_shape))
  params = model.init(key, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), train=False,
                      text_table=text_table)
  return train_state.create(params, tx)


def _inputs(config, description: dict, image_shape) -> dict:
  cfg = config.train
  keys = ('model', 'model_overrides', 'space', 'steps', 'batch_size', 'learning_rate',
          'weight_decay', 'ema_decay', 'class_dropout', 'flip', 'seed', 'bfloat16',
          'transport_path', 'text_embeddings', 'repa')
  inputs = {k: cfg[k].to_dict() if hasattr(cfg[k], 'to_dict') else cfg[k] for k in keys}
  inputs.update(description, image_shape=list(image_shape))
  if cfg.space == 'latent':
    inputs['vae'] = cfg.vae.to_dict()
  return inputs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.train
  out = run_dir(workdir, config)
  info = input_pipeline.split_info(config.data, cfg.split)
  positions, labels, description = training_positions(config, workdir)
  if cfg.space not in ('pixel', 'latent'):
    raise artifacts.UserError(f"config.train.space {cfg.space!r} is not 'pixel' or 'latent'")
  h, w, c = info.image_shape
  image_shape = (h, w, c) if cfg.space == 'pixel' else (h // 8, w // 8, 4)
  inputs = _inputs(config, description, image_shape)
  expected = artifacts.fingerprint(inputs)
  done_path = os.path.join(out, 'train.json')
  record = artifacts.finished_or_start(done_path, os.path.join(out, 'inputs.json'), expected,
                                       inputs, 'training run')
  if record is not None:
    logging.info('training %s already finished; skipping.', out)
    return record

  vae = load_vae(cfg) if cfg.space == 'latent' else None
  text_table = load_text_table(cfg)
  if cfg.repa.features and not cfg.model_overrides.get('repa_depth', 0):
    raise artifacts.UserError('config.train.repa.features is set but the model has no REPA '
                              'head: set config.train.model_overrides.repa_depth (e.g. 8)')
  model = build_model(cfg, info.num_classes, text_table)
  # The patch must divide the image; fail before any work rather than inside the step.
  jax.eval_shape(lambda: init_state(model, optax.identity(), jax.random.PRNGKey(0),
                                    image_shape, text_table))
  data_path = os.path.join(out, 'data.npz')
  if os.path.exists(data_path):
    with np.load(data_path) as z:
      data = TrainingSet(z['x'], z['logvar'] if 'logvar' in z.files else None, z['labels'],
                         z['repa'] if 'repa' in z.files else None)
  else:
    data = build_training_set(config, positions, labels, vae)
    if jax.process_index() == 0:
      extra = {k: v for k, v in (('logvar', data.logvar), ('repa', data.repa)) if v is not None}
      artifacts.atomic_write_npz(data_path, x=data.x, labels=data.labels, **extra)
  logging.info('training %s on %d images %s', cfg.model, len(data.labels), data.x.shape[1:])

  tx = optimizer(cfg)
  mesh = train_state.make_mesh(cfg.fsdp)
  key = jax.random.PRNGKey(cfg.seed)
  init = lambda: init_state(model, tx, key, image_shape, text_table)
  shardings = train_state.param_sharding(mesh, jax.eval_shape(init))
  ckpt = checkpoints.Checkpointer(os.path.join(out, 'checkpoints'))
  if ckpt.latest_step is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(init), shardings)
    state = ckpt.restore(abstract)
    logging.info('resuming %s at step %d', out, int(state.step))
  else:
    state = jax.jit(init, out_shardings=shardings)()

  diffusion = None if is_sit(cfg) else gaussian.create_diffusion()
  transport = transport_lib.create_transport(cfg.transport_path) if is_sit(cfg) else None
  step_fn = train_state.make_train_step(
      make_loss_fn(model, cfg, diffusion, transport, text_table), tx, cfg.ema_decay, mesh,
      shardings)
  global_sharding = train_state.batch_sharding(mesh)
  writer = metric_writers.create_default_writer(out, just_logging=jax.process_index() > 0)
  preemption = checkpoints.Preemption()
  start = int(state.step)
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.steps, writer=writer)
  t0, last_logged = time.time(), start
  for step in range(start, cfg.steps):
    idx = batch_indices(cfg.seed, step, len(data.labels), cfg.batch_size)
    flip_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), step) if cfg.flip else None
    local = host_batch(data, idx, flip_key)
    batch = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(global_sharding, a), local)
    state, metrics = step_fn(state, batch, key)
    progress(step + 1)
    if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
      seconds = time.time() - t0
      scalars = {k: float(v) for k, v in metrics.items()}
      scalars['steps_per_sec'] = (step + 1 - last_logged) / seconds
      scalars['images_per_sec'] = scalars['steps_per_sec'] * cfg.batch_size
      writer.write_scalars(step + 1, scalars)
      t0, last_logged = time.time(), step + 1
    stop = preemption.requested
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
      ckpt.save(step + 1, state)
    if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
      _write_grid(config, model, state.ema_params, info.num_classes, out, step + 1, vae)
    if stop:
      ckpt.wait()
      logging.warning('SIGTERM: checkpointed step %d of %s and stopped', step + 1, out)
      return {}
  ckpt.wait()
  writer.flush()
  if not cfg.sample_every or cfg.steps % cfg.sample_every:
    _write_grid(config, model, state.ema_params, info.num_classes, out, cfg.steps, vae)
  record = {'fingerprint': expected, 'inputs': inputs, 'step': cfg.steps,
            'ema_fingerprint': artifacts.array_fingerprint(state.ema_params),
            'num_images': int(len(data.labels))}
  if jax.process_index() == 0:
    artifacts.atomic_write_json(done_path, record)
  return record


def _write_grid(config, model, params, num_classes: int, out: str, step: int,
                vae=None) -> None:
  from gadc_jax.evaluation import sample  # pylint: disable=g-import-not-at-top
  cfg = config.train
  labels = np.repeat(np.arange(min(num_classes, 10)), cfg.grid_per_class)
  images = sample.generate(config, model, params, labels, jax.random.PRNGKey(cfg.seed + 2),
                           cfg.sampler, vae)
  if jax.process_index() == 0:
    from gadc_jax import report  # pylint: disable=g-import-not-at-top
    rows = np.split(images, len(images) // cfg.grid_per_class)
    report.save_image_grid(rows, os.path.join(out, f'grid-{step:07d}.png'))
