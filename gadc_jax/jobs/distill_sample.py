"""The distill_sample job (OTG): IPC images per class from the EMA parameters of a finished
train run, sampled with IGD's and the OT guidance (gadc_jax.distill.sampler), and writes

    WORKDIR/distilled/NAME/
      parts/ipc-NNNN-batch-BBBB.npz  sample NNNN of the classes of batch BBBB: model-space
                                     samples (what later samples are guided against), images
      images.npz                     images uint8 [C*IPC, H, W, C], labels int32 [C*IPC],
                                     class-major (class 0's IPC images first)
      grid.png                       one row per class
      distilled.json                 written last (the completion mark): fingerprint of the
                                     inputs, sampling seconds, sizes and checksums

Samples are made in order of their index, every class (or class batch) at once: sample n of
a class is guided against samples 1..n-1, read back from the parts. A rerun skips finished
parts; a finished set whose files are damaged redoes the damaged parts and all that follow
them (they were guided against the damaged ones). The job holds the folder's lock.
"""

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import generator
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import report
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.distill import igd
from gadc_jax.distill import sampler as sampler_lib

WHERE = 'config.distill_sample'


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Every option, checked before any work (one line each)."""
  cfg = config.distill_sample
  validation.require(cfg, WHERE, positive_ints=('ipc', 'max_ipc'),
                     non_negative_ints=('seed', 'class_batch'))
  if cfg.ipc > cfg.max_ipc:
    raise ValueError(f'{WHERE}.ipc {cfg.ipc} exceeds the sampler\'s batch limit max_ipc '
                     f'{cfg.max_ipc} (the per-class buffer of earlier samples each guided step '
                     'reads); raise max_ipc if the memory allows')
  if generator.family(config.train) != 'DiT':
    raise ValueError(f'{WHERE} guides DDPM / DDIM sampling of a DiT; config.train.model '
                     f'{config.train.model!r} is a SiT')
  generator.check_sampler(config.train, cfg.sampler, f'{WHERE}.sampler')
  start, end = cfg.window
  if not (isinstance(start, int) and isinstance(end, int)
          and 0 <= start <= end <= cfg.sampler.steps):
    raise ValueError(f'{WHERE}.window must be steps (start, end) with 0 <= start <= end <= '
                     f'sampler.steps {cfg.sampler.steps}, got {tuple(cfg.window)}')
  validation.require(cfg.scales, f'{WHERE}.scales', non_negative=sampler_lib.TERMS)
  validation.require(cfg.ot, f'{WHERE}.ot', positive=('epsilon_rel', 'sinkhorn_threshold'),
                     positive_ints=('num_real', 'sinkhorn_iterations'))
  if not cfg.ot.stop_gradient:
    raise ValueError(f'{WHERE}.ot.stop_gradient False (the gradient through the model) is not '
                     'implemented; use True')
  validation.require(cfg.deviation, f'{WHERE}.deviation', positive_ints=('memory',))
  validation.require(cfg.surrogate, f'{WHERE}.surrogate', positive_ints=('num_real',))
  if cfg.scales.influence > 0:
    if not cfg.surrogate.networks:
      raise ValueError(f'{WHERE}.scales.influence is on but {WHERE}.surrogate.networks names '
                       'no network')
    networks.check_use(config, f'{WHERE}.surrogate.networks', cfg.surrogate.networks)
  networks.check_use(config, WHERE, (), [(f'{WHERE}.real_split', cfg.real_split)])


def _active_terms(cfg) -> tuple[str, ...]:
  return tuple(t for t in sampler_lib.TERMS if cfg.scales[t] > 0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  _check_config(config)
  out = layout.distilled_dir(workdir, layout.distilled_name(config.distill_sample))
  with artifacts.exclusive(out):
    return _distill(config, workdir, out)


def _part(n: int, b: int) -> str:
  return os.path.join('parts', f'ipc-{n:04d}-batch-{b:04d}.npz')


def _distill(config: ml_collections.ConfigDict, workdir: str, out: str) -> dict:
  cfg = config.distill_sample
  info = input_pipeline.split_info(config.data, config.train.split)
  terms = _active_terms(cfg)
  surrogates = cfg.surrogate.networks if 'influence' in terms else ()
  inputs = {
      'train': generator.generator_fingerprint(config, workdir),
      'real_split': cfg.real_split,
      'options': {k: cfg[k].to_dict() if hasattr(cfg[k], 'to_dict') else cfg[k]
                  for k in ('ipc', 'seed', 'class_batch', 'sampler', 'window', 'scales',
                            'normalize', 'ot', 'deviation')},
      'surrogates': {name: networks.network_record(config, workdir, name)['params_fingerprint']
                     for name in surrogates},
      'surrogate_num_real': cfg.surrogate.num_real if surrogates else 0,
  }
  expected = artifacts.fingerprint(inputs)
  done_path = os.path.join(out, 'distilled.json')
  done = artifacts.finished_or_start(done_path, os.path.join(out, 'parts', 'inputs.json'),
                                     expected, inputs, 'distilled set')
  class_batch = cfg.class_batch or info.num_classes
  batches = -(-info.num_classes // class_batch)
  parts = [[_part(n, b) for b in range(batches)] for n in range(cfg.ipc)]
  if done is not None:
    damaged = artifacts.damaged_on_rerun(out, done['files'], 'distilled set')
    if not damaged:
      return done
    # A damaged part and every later one of its batch: those were guided against it.
    redo = []
    for b in range(batches):
      hit = [n for n in range(cfg.ipc) if parts[n][b] in damaged]
      redo += [parts[n][b] for n in range(min(hit), cfg.ipc)] if hit else []
    artifacts.remove_files(out, redo)
  todo = [(n, b) for n in range(cfg.ipc) for b in range(batches)
          if not os.path.exists(os.path.join(out, parts[n][b]))]
  if todo:
    _sample_parts(config, workdir, out, todo, parts, info, class_batch)

  loaded = [[np.load(os.path.join(out, parts[n][b])) for b in range(batches)]
            for n in range(cfg.ipc)]
  by_index = np.stack([np.concatenate([p['images'] for p in row])[:info.num_classes]
                       for row in loaded], axis=1)  # [C, IPC, H, W, C]
  seconds = float(sum(float(p['seconds']) for row in loaded for p in row))
  images = by_index.reshape((-1,) + by_index.shape[2:])
  labels = np.repeat(np.arange(info.num_classes), cfg.ipc).astype(np.int32)
  final = os.path.join(out, 'images.npz')
  artifacts.atomic_write_npz(final, images=images, labels=labels)
  report.save_image_grid([row[:10] for row in by_index], os.path.join(out, 'grid.png'))
  names = ['images.npz', 'grid.png'] + [p for row in parts for p in row]
  summary = {'fingerprint': expected, 'inputs': inputs, 'path': final, 'ipc': int(cfg.ipc),
             'num_classes': int(info.num_classes), 'guidance': list(terms),
             'seconds': seconds, 'files': artifacts.describe_files(out, names)}
  artifacts.atomic_write_json(done_path, summary)
  logging.info('distilled %d images per class into %s (%.1f s of sampling)', cfg.ipc, out,
               seconds)
  return summary


def _model_space(config, images: np.ndarray, vae) -> jax.Array:
  """uint8 images [N, H, W, C] -> model space [N, h, w, c]: pixels in [-1, 1], or scaled
  SD-VAE latents (the posterior mean)."""
  x = networks.to_unit_range(jnp.asarray(images))
  if config.train.space == 'pixel':
    return x
  vae_model, vae_params = vae
  mean, _ = vae_model.apply(vae_params, x, method='encode')
  return mean * config.train.vae.scale


def _class_rows(labels: np.ndarray, num_classes: int, count: int, seed: int) -> np.ndarray:
  """[num_classes, k] positions of k = min(count, smallest class) random images per class."""
  rng = np.random.default_rng(seed)
  members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  smallest = min(len(m) for m in members)
  if smallest == 0:
    raise ValueError('a class of config.distill_sample.real_split has no images')
  k = min(count, smallest)
  return np.stack([rng.choice(m, k, replace=False) for m in members])


def _sample_parts(config, workdir: str, out: str, todo, parts, info, class_batch: int) -> None:
  cfg = config.distill_sample
  model, params = generator.restore_generator(config, workdir, info.num_classes,
                                              info.image_shape)
  text_table = generator.load_text_table(config.train, info.num_classes)
  vae = generator.load_vae(config.train) if config.train.space == 'latent' else None
  shape = generator.model_space_shape(config.train, info.image_shape)
  real = input_pipeline.load_split_arrays(config.data, cfg.real_split)
  terms = _active_terms(cfg)

  ot_rows = _class_rows(real['label'], info.num_classes, cfg.ot.num_real, cfg.seed)
  real_model_space = np.stack([np.asarray(_model_space(config, real['image'][rows], vae))
                               for rows in ot_rows]).reshape(info.num_classes,
                                                             ot_rows.shape[1], -1)
  surrogate_modules, surrogate_params, real_gradients = [], [], []
  if 'influence' in terms:
    grad_rows = _class_rows(real['label'], info.num_classes, cfg.surrogate.num_real,
                            cfg.seed + 1)
    for name in cfg.surrogate.networks:
      module, variables, _ = networks.load_network(config, workdir, name)
      spec = networks.input_spec(config.networks[name])
      logits_fn = sampler_lib.surrogate_logits_fn(module, spec)
      class_gradient = jax.jit(lambda images, label, f=logits_fn, v=variables:
                               igd.loss_gradient(f, v, images, label))
      real_gradients.append(jnp.stack([
          class_gradient(networks.to_unit_range(jnp.asarray(real['image'][rows])),
                         jnp.full((len(rows),), c, jnp.int32))
          for c, rows in enumerate(grad_rows)]))
      surrogate_modules.append((module, spec))
      surrogate_params.append(variables)

  spec = sampler_lib.GuidanceSpec(
      terms=terms, window=tuple(cfg.window), normalize=bool(cfg.normalize),
      epsilon_rel=float(cfg.ot.epsilon_rel), sinkhorn_iterations=cfg.ot.sinkhorn_iterations,
      sinkhorn_threshold=float(cfg.ot.sinkhorn_threshold), memory=cfg.deviation.memory,
      surrogates=tuple(surrogate_modules),
      latent_scale=float(config.train.vae.scale) if vae is not None else 0.0,
      vae=vae[0] if vae is not None else None)
  static = dict(model=model, method=cfg.sampler.method, steps=int(cfg.sampler.steps),
                cfg_scale=float(cfg.sampler.cfg_scale),
                num_guided_channels=generator.guided_channels(
                    config.train, cfg.sampler, shape[-1], f'{WHERE}.sampler'),
                num_classes=info.num_classes, pixel=config.train.space == 'pixel', spec=spec)
  scales = {t: jnp.float32(cfg.scales[t]) for t in sampler_lib.TERMS}
  key = jax.random.PRNGKey(cfg.seed)
  for n, b in tqdm.tqdm(todo, desc=f'distill {os.path.basename(out)}', unit='part'):
    # The batch's classes, padded to class_batch with its last class: one compilation.
    classes = np.arange(b * class_batch, (b + 1) * class_batch).clip(max=info.num_classes - 1)
    earlier = np.zeros((class_batch, cfg.ipc) + shape, np.float32)
    for m in range(n):
      earlier[:, m] = np.load(os.path.join(out, parts[m][b]))['model_space']
    context = sampler_lib.GuidanceContext(
        scales=scales, earlier=jnp.asarray(earlier), count=jnp.int32(n),
        real=jnp.asarray(real_model_space[classes]),
        surrogate_params=tuple(surrogate_params),
        real_gradients=tuple(g[classes] for g in real_gradients),
        vae_params=vae[1] if vae is not None else None)
    start = time.perf_counter()
    x = jax.block_until_ready(sampler_lib.sample_next(
        params, jnp.asarray(classes, jnp.int32), jax.random.fold_in(jax.random.fold_in(key, n),
                                                                     b),
        context, text_table, **static))
    seconds = time.perf_counter() - start
    images = np.asarray(generator.to_images(config.train, x, vae))
    artifacts.atomic_write_npz(os.path.join(out, parts[n][b]), model_space=np.asarray(x),
                               images=images, labels=classes.astype(np.int32),
                               seconds=np.float64(seconds))
    preemption.raise_if_agreed(f'after part {parts[n][b]} of the distill_sample job ({out})')
