"""Sampling with classifier-free guidance, and the sample job.

`generate` turns class labels into uint8 images with a trained DiT (DDPM or DDIM over a
respaced Gaussian diffusion) or SiT (ODE or SDE over the transport), decoding SD-VAE latents
when the model was trained on them. The sample job draws `num_samples` class-balanced images
from the EMA parameters of a train run, in fixed-seed batches (resumable: a finished batch is a
file), and writes WORKDIR/samples/NAME/samples.npz (images uint8 [N, H, W, C], labels [N])
plus grid.png.
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import report
from gadc_jax.data import input_pipeline
from gadc_jax.diffusion import gaussian
from gadc_jax.diffusion import guidance
from gadc_jax.diffusion import transport as transport_lib
from gadc_jax.training import checkpoints
from gadc_jax.training import train as train_lib
from gadc_jax.training import train_state


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': '',              # output folder; '' = the train run's name.
      'num_samples': 1000,     # class-balanced: labels cycle through the classes.
      'batch_size': 250,
      'seed': 0,
      'sampler': train_lib.sampler_config(),
  })


def _model_space_shape(config) -> tuple[int, int, int]:
  h, w, c = input_pipeline.split_info(config.data, config.train.split).image_shape
  return (h, w, c) if config.train.space == 'pixel' else (h // 8, w // 8, 4)


@functools.partial(jax.jit, static_argnames=('model', 'sampler', 'sit', 'pixel', 'shape',
                                              'num_classes'))
def _sample(params, labels, key, text_table, *, model, sampler, sit: bool, pixel: bool, shape,
            num_classes: int):
  """Model-space samples [B, *shape] for labels [B]; sampler = (method, steps, scale, k)."""
  method, steps, scale, guided_channels = sampler

  def apply_fn(x, t, y):
    out = model.apply(params, x, t, y, train=False, text_table=text_table)
    return out[0] if isinstance(out, tuple) else out  # drop REPA extras.

  if scale == 1.0:
    model_fn = lambda x, t: apply_fn(x, t, labels)
  else:
    guided = guidance.cfg_model_fn(apply_fn, scale, num_classes, guided_channels or None)
    model_fn = lambda x, t: guided(x, t, labels)
  k_init, k_loop = jax.random.split(key)
  x_init = jax.random.normal(k_init, (labels.shape[0],) + shape)
  if sit:
    transport = transport_lib.create_transport()
    if method == 'ode':
      return transport.ode_sample(model_fn, x_init, steps)
    return transport.sde_sample(model_fn, x_init, steps, k_loop)
  diffusion = gaussian.create_diffusion(str(steps))
  if method == 'ddpm':
    return diffusion.p_sample_loop(model_fn, x_init, k_loop, clip_denoised=pixel)
  return diffusion.ddim_sample_loop(model_fn, x_init, k_loop, clip_denoised=pixel)


def _check_sampler(sampler_cfg, sit: bool) -> None:
  allowed = ('ode', 'sde') if sit else ('ddpm', 'ddim')
  if sampler_cfg.method not in allowed:
    raise artifacts.UserError(
        f'sampler {sampler_cfg.method!r} does not fit a {"SiT" if sit else "DiT"}; use one of '
        + ', '.join(allowed))


def generate(config, model, params, labels: np.ndarray, key: jax.Array,
             sampler_cfg: ml_collections.ConfigDict, vae=None) -> np.ndarray:
  """uint8 images [B, H, W, C] for `labels`, from a model trained as `config.train` says.

  `vae` is (module, params) of the SD-VAE for latent models (loaded from config if None).
  """
  cfg = config.train
  sit = train_lib.is_sit(cfg)
  _check_sampler(sampler_cfg, sit)
  pixel = cfg.space == 'pixel'
  num_classes = input_pipeline.split_info(config.data, cfg.split).num_classes
  sampler = (sampler_cfg.method, int(sampler_cfg.steps), float(sampler_cfg.cfg_scale),
             int(sampler_cfg.guided_channels))
  x = _sample(params, jnp.asarray(labels, jnp.int32), key, train_lib.load_text_table(cfg),
              model=model, sampler=sampler,
              sit=sit, pixel=pixel, shape=_model_space_shape(config), num_classes=num_classes)
  if not pixel:
    vae_model, vae_params = vae or train_lib.load_vae(cfg)
    x = vae_model.apply(vae_params, x / cfg.vae.scale, method='decode')
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255), np.uint8)


def load_ema_params(config, workdir: str):
  """(model, EMA params) of the finished train run that config.train names."""
  cfg = config.train
  out = train_lib.run_dir(workdir, config)
  if not os.path.exists(os.path.join(out, 'train.json')):
    raise artifacts.UserError(f'no finished training run in {out}; run the train job first')
  record = artifacts.read_json(os.path.join(out, 'train.json'))
  info = input_pipeline.split_info(config.data, cfg.split)
  text_table = train_lib.load_text_table(cfg)
  model = train_lib.build_model(cfg, info.num_classes, text_table)
  abstract = jax.eval_shape(lambda: train_lib.init_state(
      model, train_lib.optimizer(cfg), jax.random.PRNGKey(0), _model_space_shape(config),
      text_table))
  state = checkpoints.Checkpointer(os.path.join(out, 'checkpoints')).restore(
      abstract, record['step'])
  artifacts.check_fingerprint(out, record['ema_fingerprint'],
                              artifacts.array_fingerprint(state.ema_params), 'EMA params')
  return model, state.ema_params, record


def run_name(config) -> str:
  return config.sample.name or train_lib.run_name(config)


def samples_file(config, workdir: str) -> str:
  """Where the sample job of `config` writes its samples .npz."""
  return os.path.join(workdir, 'samples', run_name(config), 'samples.npz')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.sample
  model, params, record = load_ema_params(config, workdir)
  name = run_name(config)
  out = os.path.dirname(samples_file(config, workdir))
  inputs = {'train': record['fingerprint'], 'num_samples': cfg.num_samples,
            'batch_size': cfg.batch_size, 'seed': cfg.seed, 'sampler': cfg.sampler.to_dict()}
  expected = artifacts.fingerprint(inputs)
  final = os.path.join(out, 'samples.npz')
  done = artifacts.finished_or_start(os.path.join(out, 'samples.json'),
                                     os.path.join(out, 'parts', 'inputs.json'), expected,
                                     inputs, 'samples')
  if done is not None:
    logging.info('samples %s already complete; skipping.', out)
    return done

  num_classes = input_pipeline.split_info(config.data, config.train.split).num_classes
  labels = np.arange(cfg.num_samples) % num_classes
  vae = train_lib.load_vae(config.train) if config.train.space == 'latent' else None
  key = jax.random.PRNGKey(cfg.seed)
  num_batches = -(-cfg.num_samples // cfg.batch_size)
  parts = [os.path.join(out, 'parts', f'part-{b:05d}.npz') for b in range(num_batches)]
  # Pad every batch to one size divisible by the devices: one compilation, sharded.
  mesh = train_state.make_mesh()
  size = -(-cfg.batch_size // mesh.size) * mesh.size
  for b in tqdm.tqdm(range(num_batches), desc=f'sample {name}', unit='batch'):
    if os.path.exists(parts[b]):
      continue
    y = labels[b * cfg.batch_size:(b + 1) * cfg.batch_size]
    padded = jax.device_put(np.resize(y, size), train_state.batch_sharding(mesh))
    images = generate(config, model, params, padded, jax.random.fold_in(key, b), cfg.sampler,
                      vae)[:len(y)]
    artifacts.atomic_write_npz(parts[b], images=images, labels=y.astype(np.int32))
  images = np.concatenate([np.load(p)['images'] for p in parts])
  artifacts.atomic_write_npz(final, images=images, labels=labels.astype(np.int32))
  per_class = max(1, min(10, cfg.num_samples // num_classes))
  rows = [images[labels == c][:per_class] for c in range(min(num_classes, 10))]
  report.save_image_grid(rows, os.path.join(out, 'grid.png'))
  summary = {'fingerprint': expected, 'inputs': inputs, 'path': final,
             'num_samples': int(cfg.num_samples)}
  artifacts.atomic_write_json(os.path.join(out, 'samples.json'), summary)
  return summary
