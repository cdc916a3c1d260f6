"""D2C's diffusion difficulty score: the per-image denoising loss of a class-conditional DiT.

D2C (arXiv 2507.05914, "Select" phase) scores each training image by how badly a diffusion
model trained on the whole split predicts the noise added to it, conditioned on its class:

    score(x_0, y) = mean over t in T, j < J of  mean_flat((eps_j - eps_theta(x_t, t, y))^2),
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_j,

with T a fixed set of timesteps of the 1000-step process (config.difficulty.timesteps) and J
fixed noise draws per image (config.difficulty.num_noise). The draws of an image are a pure
function of (config.difficulty.seed, its position in the split), so a score depends on
neither the batch, the shard nor the host that computed it.

The scorer is the train run that config.difficulty.scorer describes (a config.train
section; the pipeline trains it on the whole split before the difficulty stage). The scores
are stored as a FeatureStore with one field, `difficulty` [N] float32, sorted like the
feature stores of the same split (class, then position), under
WORKDIR/difficulty/RUN-SPLIT/ (`layout.difficulty_dir`).
"""

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import batching
from gadc_jax import feature_store
from gadc_jax import generator
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.diffusion import gaussian

# Selection methods that rank images by this score (config.select.method).
METHODS = ('d2c',)


def scorer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with config.train replaced by config.difficulty.scorer: the config under which
  the train job trains the scorer and `generator.restore_ema_params` restores it."""
  scorer = config.copy_and_resolve_references()
  scorer.train = config.difficulty.scorer.copy_and_resolve_references()
  return scorer


def store_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return layout.difficulty_dir(workdir, layout.train_name(scorer_config(config)),
                               config.difficulty.split)


def check_config(config: ml_collections.ConfigDict) -> None:
  """config.difficulty, checked before any work: one ValueError naming the key."""
  cfg = config.difficulty
  validation.require(cfg, 'config.difficulty',
                     positive_ints=('num_noise', 'batch_size', 'shard_size'),
                     non_negative_ints=('seed',))
  timesteps = tuple(cfg.timesteps)
  if not timesteps or not all(isinstance(t, int) and not isinstance(t, bool)
                              and 0 <= t < generator.DIFFUSION_STEPS for t in timesteps):
    raise ValueError(f'config.difficulty.timesteps must be timesteps of the '
                     f'{generator.DIFFUSION_STEPS}-step diffusion (integers in [0, '
                     f'{generator.DIFFUSION_STEPS})), got {cfg.timesteps!r}')
  if generator.family(cfg.scorer) != 'DiT':
    raise ValueError(f'config.difficulty.scorer.model must be a DiT: the difficulty score is '
                     f'the epsilon-prediction loss of Gaussian diffusion, got '
                     f'{cfg.scorer.model!r}')
  generator.check_space(cfg.scorer)


def noise_draws(key: jax.Array, positions: jax.Array, num_noise: int, shape) -> jax.Array:
  """The fixed noise of each image: [num_noise, b, *shape] for positions [b] in the split,
  image i's draws from fold_in(key, positions[i])."""
  draw = lambda p: jax.random.normal(jax.random.fold_in(key, p), (num_noise,) + tuple(shape))
  return jnp.swapaxes(jax.vmap(draw)(positions), 0, 1)


def denoising_losses(eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
                     diffusion: gaussian.GaussianDiffusion, x0: jax.Array, timesteps,
                     noise: jax.Array) -> jax.Array:
  """The score of each image: its epsilon MSE averaged over timesteps and noise draws.

  Args:
    eps_fn: (x_t [b, ..., C], t [b] int32) -> predicted eps [b, ..., C] (the images' labels
      are bound in it).
    diffusion: an un-respaced process (timesteps are indices of it).
    x0: model-space images [b, ..., C].
    timesteps: the T timesteps, a sequence of ints.
    noise: [J, b, ..., C] noise draws.

  Returns:
    [b] float32 scores.
  """
  def loss_at(carry, inputs):
    t, eps = inputs
    t_batch = jnp.full((x0.shape[0],), t, jnp.int32)
    x_t = diffusion.q_sample(x0, t_batch, eps)
    return carry + gaussian.mean_flat((eps - eps_fn(x_t, t_batch)) ** 2), None

  # Every (timestep, draw) pair, one model call each: memory stays that of one batch.
  t_all = jnp.repeat(jnp.asarray(timesteps, jnp.int32), noise.shape[0])
  eps_all = jnp.tile(noise, (len(timesteps),) + (1,) * (noise.ndim - 1))
  total, _ = jax.lax.scan(loss_at, jnp.zeros(x0.shape[0], jnp.float32), (t_all, eps_all))
  return total / t_all.shape[0]


@functools.partial(jax.jit, static_argnames=('model', 'timesteps', 'num_noise'))
def _scores(params, x0, labels, positions, key, text_table, *, model, timesteps,
            num_noise: int):
  def eps_fn(x_t, t):
    out = model.apply(params, x_t, t, labels, train=False, text_table=text_table)
    out = out[0] if isinstance(out, tuple) else out  # drop REPA extras.
    return out[..., :x0.shape[-1]]  # eps; the rest is the learned variance.

  noise = noise_draws(key, positions, num_noise, x0.shape[1:])
  return denoising_losses(eps_fn, gaussian.create_diffusion(), x0, timesteps, noise)


def make_scorer(config: ml_collections.ConfigDict, workdir: str):
  """score(images uint8 [b, H, W, C], labels [b], positions [b]) -> [b] float32 numpy, for
  b <= config.difficulty.batch_size: the scorer's EMA model, jitted once (batches padded
  to one size and sharded over this host's devices)."""
  cfg = config.difficulty
  scorer = scorer_config(config)
  info = input_pipeline.split_info(config.data, cfg.split)
  model, params, _ = generator.restore_ema_params(scorer, workdir, info.num_classes,
                                                  info.image_shape)
  text_table = generator.load_text_table(scorer.train, info.num_classes)
  vae = generator.load_vae(scorer.train) if scorer.train.space == 'latent' else None
  # Latents are the posterior mean: deterministic, so that a score is a fixed number.
  encode = jax.jit(lambda p, x: vae[0].apply(p, x, method='encode')[0]
                   * scorer.train.vae.scale)
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  size = batching.round_up(cfg.batch_size, mesh.size)
  key = jax.random.PRNGKey(cfg.seed)

  def call(batch):
    x0 = networks.to_unit_range(batch['images'])
    if vae is not None:
      x0 = encode(vae[1], x0)
    return _scores(params, x0, batch['labels'], batch['positions'], key, text_table,
                   model=model, timesteps=tuple(cfg.timesteps), num_noise=cfg.num_noise)

  def score(images, labels, positions):
    batch = {'images': images, 'labels': np.asarray(labels, np.int32),
             'positions': np.asarray(positions, np.int32)}
    return np.asarray(batching.padded_call(call, batch, size, sharding), np.float32)

  return score


def expected_inputs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What the scores depend on: the dataset and preprocessing, the scorer's finished train
  run (its EMA parameters), the timesteps, draws and seed."""
  cfg = config.difficulty
  info = input_pipeline.split_info(config.data, cfg.split)
  scorer = scorer_config(config)
  record = generator.finished_train_record(scorer, workdir)
  return {
      'dataset': [info.dataset, info.version, info.split, info.num_examples],
      'image_size': config.data.image_size,
      'scorer': layout.train_name(scorer),
      'scorer_run': record['fingerprint'],
      'scorer_ema': record['ema_fingerprint'],
      'timesteps': [int(t) for t in cfg.timesteps],
      'num_noise': cfg.num_noise,
      'seed': cfg.seed,
  }


def open_scores(config: ml_collections.ConfigDict, workdir: str,
                features: feature_store.FeatureStore) -> feature_store.FeatureStore:
  """The finished difficulty store of config.difficulty, checked against the scorer and the
  config, and against `features` (a store of the same split): the same ids, class by class
  in the same order, so that class c's scores are rows offsets[c]:offsets[c+1] of both."""
  if config.difficulty.split != config.select.split:
    raise ValueError(f'config.difficulty.split {config.difficulty.split!r} is not the split '
                     f'config.select.split {config.select.split!r} selects from')
  path = store_dir(config, workdir)
  if not os.path.exists(os.path.join(path, 'manifest.json')):
    raise FileNotFoundError(
        f'config.select.method {config.select.method!r} ranks images by diffusion difficulty, '
        f'but {os.path.join(path, "manifest.json")} does not exist; run the difficulty stage '
        "first (the pipeline with 'difficulty' in config.stages trains the scorer and scores "
        'the split)')
  scores = feature_store.FeatureStore(path, 'difficulty')
  expected = artifacts.fingerprint(expected_inputs(config, workdir))
  artifacts.check_fingerprint(path, expected, scores.fingerprint, 'difficulty')
  ids = np.asarray(scores.load('ids'))
  if not np.array_equal(scores.offsets, features.offsets):
    raise ValueError(f'{path} and {features.path} do not hold the same classes')
  mismatch = np.flatnonzero(ids != np.asarray(features.load('ids')))
  if mismatch.size:
    raise ValueError(f'{path} and {features.path} do not hold the same images: row '
                     f'{mismatch[0]} is {ids[mismatch[0]]} in one and '
                     f'{features.load("ids")[mismatch[0]]} in the other')
  return scores
