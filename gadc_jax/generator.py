"""The diffusion model that config.train describes: build it, restore it, sample from it.

Shared by the train job (its periodic sample grids) and the sample jobs: a DiT (Gaussian
diffusion, DDPM or DDIM over a respaced schedule) or a SiT (transport, ODE or SDE), in pixel
space or on SD-VAE latents, with classifier-free guidance and optional class text embeddings.

The generator the sample and distill_sample jobs use is the finished train run of
config.train, or, when config.train.weights names one, a published checkpoint of the same
model in the DiT release's layout (e.g. DiT-XL-2-256x256.pt), converted on load.
"""

import functools
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import batching
from gadc_jax import layout
from gadc_jax import validation
from gadc_jax.diffusion import gaussian
from gadc_jax.diffusion import guidance
from gadc_jax.diffusion import transport as transport_lib
from gadc_jax.models import convert
from gadc_jax.models import dit as dit_lib
from gadc_jax.models import vae as vae_lib
from gadc_jax.training import checkpoints

SAMPLERS = {'DiT': ('ddpm', 'ddim'), 'SiT': ('ode', 'sde')}
SPACES = ('pixel', 'latent')
# Steps of DiT's diffusion process: a DDPM / DDIM sampler takes at most these.
DIFFUSION_STEPS = 1000
# DiT's and SiT's forward_with_cfg guide the first 3 of the 4 SD-VAE latent channels.
RELEASE_GUIDED_CHANNELS = 3


def family(train_cfg) -> str:
  """'DiT' or 'SiT': the model family of config.train.model."""
  return 'SiT' if train_cfg.model.startswith('SiT') else 'DiT'


def check_sampler(train_cfg, sampler_cfg, where: str = 'sampler') -> None:
  """A ValueError naming the field of sampler section `where` (e.g. 'config.sample.sampler')
  that does not fit: the method must fit the model family (ddpm/ddim for DiT, ode/sde for
  SiT), steps a positive integer (at most DIFFUSION_STEPS for DiT), cfg_scale >= 0."""
  allowed = SAMPLERS[family(train_cfg)]
  if sampler_cfg.method not in allowed:
    raise ValueError(f'{where}.method {sampler_cfg.method!r} does not fit a '
                     f'{family(train_cfg)} ({train_cfg.model}); use one of {", ".join(allowed)}')
  validation.require(sampler_cfg, where, positive_ints=('steps',), non_negative=('cfg_scale',),
                     non_negative_ints=('guided_channels',))
  if family(train_cfg) == 'DiT' and sampler_cfg.steps > DIFFUSION_STEPS:
    raise ValueError(f'{where}.steps must be at most the {DIFFUSION_STEPS} steps of the '
                     f'diffusion, got {sampler_cfg.steps}')


def guided_channels(train_cfg, sampler_cfg, channels: int, where: str = 'sampler') -> int:
  """The leading channels of the model's prediction that classifier-free guidance mixes.

  sampler_cfg.guided_channels, or for 0 the release's choice in config.train.space: on
  SD-VAE latents the first RELEASE_GUIDED_CHANNELS (DiT's and SiT's forward_with_cfg), in
  pixel space every one of the `channels` channels of the images. A ValueError when it
  exceeds `channels`: the variance channels of a learned-sigma DiT are never guided.
  """
  count = sampler_cfg.guided_channels
  if count == 0:
    return channels if train_cfg.space == 'pixel' else min(RELEASE_GUIDED_CHANNELS, channels)
  if count > channels:
    raise ValueError(f'{where}.guided_channels is {count} but the model space has only '
                     f'{channels} channels')
  return count


def check_space(train_cfg) -> None:
  if train_cfg.space not in SPACES:
    raise ValueError(f'config.train.space must be one of {", ".join(SPACES)}, got '
                     f'{train_cfg.space!r}')


def model_space_shape(train_cfg, image_shape) -> tuple[int, int, int]:
  """(h, w, c) the model sees: the images' own shape in pixel space, else SD-VAE latents."""
  check_space(train_cfg)
  if train_cfg.space == 'pixel':
    return tuple(image_shape)
  return vae_lib.latent_shape(image_shape, tuple(train_cfg.vae.channels))


def load_text_table(train_cfg, num_classes: int) -> dit_lib.TextTable | None:
  """The per-class text embeddings that config.train.text_embeddings names, or None.

  The file is a .npz (the text_embeddings job writes it) with `tokens` [num_classes, L, W]
  (float: the text encoder's last hidden state of each class name) and `mask`
  [num_classes, L] (1 for a real token, 0 for padding).
  """
  path = train_cfg.text_embeddings
  if not path:
    return None
  if not os.path.exists(path):
    raise FileNotFoundError(f'text embeddings file {path} does not exist')
  expected = "a .npz with 'tokens' [num_classes, tokens, width] and 'mask' [num_classes, tokens]"
  unreadable = (OSError, ValueError, zipfile.BadZipFile)
  try:
    loaded = np.load(path, allow_pickle=False)
  except unreadable as e:
    raise ValueError(f'text embeddings file {path} is not a .npz file ({e})') from None
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise ValueError(f'text embeddings file {path} holds one array {loaded.shape} (an older '
                     f'.npy table?); expected {expected}: run the text_embeddings job')
  try:
    with loaded:
      arrays = {k: loaded[k] for k in ('tokens', 'mask') if k in loaded.files}
      names = sorted(loaded.files)
  except unreadable as e:
    raise ValueError(f'text embeddings file {path} is damaged ({e})') from None
  if len(arrays) != 2:
    raise ValueError(f'text embeddings file {path} holds {names}; expected {expected}')
  tokens, mask = arrays['tokens'], arrays['mask']
  if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
    raise ValueError(f'text embeddings file {path} has tokens {tokens.shape} and mask '
                     f'{mask.shape}; expected [num_classes, tokens, width] and '
                     '[num_classes, tokens]')
  if len(tokens) != num_classes:
    raise ValueError(f'text embeddings file {path} has {len(tokens)} classes, the dataset '
                     f'{num_classes}')
  if not np.issubdtype(tokens.dtype, np.floating) or not np.isfinite(tokens).all():
    raise ValueError(f'text embeddings file {path}: tokens must be finite floats, got '
                     f'{tokens.dtype} with {np.size(tokens) - np.isfinite(tokens).sum()} '
                     'non-finite values')
  if not np.isin(mask, (0, 1)).all():
    raise ValueError(f'text embeddings file {path}: mask must hold only 0 (padding) and 1 '
                     f'(token), found {np.setdiff1d(mask, (0, 1))[:5]}')
  return dit_lib.TextTable(tokens.astype(np.float32), mask.astype(np.float32))


def build_model(train_cfg, num_classes: int,
                text_table: dit_lib.TextTable | None = None) -> dit_lib.DiT:
  text = {} if text_table is None else {'text_tokens': text_table.tokens.shape[1],
                                        'text_dim': text_table.tokens.shape[2]}
  return dit_lib.make_dit(train_cfg.model, num_classes=num_classes,
                          class_dropout_prob=train_cfg.class_dropout,
                          dtype=jnp.bfloat16 if train_cfg.bfloat16 else jnp.float32,
                          remat=train_cfg.remat, attention=train_cfg.attention,
                          **train_cfg.model_overrides.to_dict(), **text)


def init_params(model: dit_lib.DiT, key: jax.Array, shape, text_table=None):
  """The model's initial variables for inputs of model-space shape (h, w, c)."""
  x = jnp.zeros((1,) + tuple(shape))
  return model.init(key, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), train=False,
                    text_table=text_table)


def load_vae(train_cfg):
  """(SD-VAE module, params) from config.train.vae.checkpoint (a local diffusers file)."""
  if not train_cfg.vae.checkpoint:
    raise ValueError('config.train.space is latent: set config.train.vae.checkpoint to a '
                     'local diffusers AutoencoderKL weights file')
  model = vae_lib.AutoencoderKL(channels=tuple(train_cfg.vae.channels))
  params = convert.vae_from_diffusers(convert.load_torch_state_dict(train_cfg.vae.checkpoint),
                                      model)
  return model, params


def finished_train_record(config, workdir: str) -> dict:
  """The train.json record of the finished train run that config.train names."""
  out = layout.train_dir(workdir, config)
  done = os.path.join(out, 'train.json')
  if not os.path.exists(done):
    raise FileNotFoundError(f'no finished training run in {out}; run the train job first')
  return artifacts.read_json(done)


def restore_ema_params(config, workdir: str, num_classes: int, image_shape):
  """(model, EMA params, train record) of the finished train run that config.train names.

  The final checkpoint is checked against what train.json recorded of it, and the EMA
  parameters against their fingerprint; only they are read: no optimizer is built.
  """
  cfg = config.train
  out = layout.train_dir(workdir, config)
  record = finished_train_record(config, workdir)
  ckpt = checkpoints.Checkpointer(os.path.join(out, 'checkpoints'))
  try:
    ckpt.verify(record['step'], record['checkpoint'])
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'the train run {out} is not whole: {e}; run the train job again (it '
                  'redoes the steps after its latest whole checkpoint)') from None
  text_table = load_text_table(cfg, num_classes)
  model = build_model(cfg, num_classes, text_table)
  abstract = jax.eval_shape(lambda: init_params(
      model, jax.random.PRNGKey(0), model_space_shape(cfg, image_shape), text_table))
  ema = ckpt.restore_field('ema_params', abstract, record['step'])
  artifacts.check_fingerprint(out, record['ema_fingerprint'], artifacts.array_fingerprint(ema),
                              'EMA params')
  return model, ema, record


def generator_fingerprint(config, workdir: str) -> str:
  """What samples depend on of their generator: the bytes of config.train.weights (and the
  model it is read as), or the finished train run's inputs."""
  cfg = config.train
  if cfg.weights:
    if not os.path.isfile(cfg.weights):
      raise FileNotFoundError(f'config.train.weights: {cfg.weights} does not exist')
    return artifacts.fingerprint({'weights': artifacts.file_fingerprint(cfg.weights),
                                  'model': cfg.model,
                                  'model_overrides': cfg.model_overrides.to_dict()})
  return finished_train_record(config, workdir)['fingerprint']


def restore_generator(config, workdir: str, num_classes: int, image_shape):
  """(model, params) of the generator (module docstring): config.train.weights converted,
  or the train run's EMA parameters. A generator of another class count than
  `num_classes` is a ValueError naming both."""
  cfg = config.train
  if cfg.weights:
    return _published_generator(cfg, num_classes, image_shape)
  try:
    model, params, _ = restore_ema_params(config, workdir, num_classes, image_shape)
  except ValueError as e:
    if 'y_embedder' not in str(e):
      raise
    raise ValueError(f'the generator {layout.train_dir(workdir, config)} was not trained for '
                     f'the {num_classes} classes of the data (its label embedding has '
                     'another size); train it on this data, or point config.train at a run '
                     'that was') from None
  return model, params


def _published_generator(cfg, num_classes: int, image_shape):
  """(model, params) of the checkpoint file cfg.weights, converted to the model cfg names."""
  state = convert.load_torch_state_dict(cfg.weights)
  table = state.get('y_embedder.embedding_table.weight')
  # DiT's label table has a row per class and one for the null class of guidance.
  if table is not None and table.shape[0] != num_classes + 1:
    raise ValueError(f'config.train.weights {cfg.weights} is a generator of '
                     f'{table.shape[0] - 1} classes; the data have {num_classes}')
  text_table = load_text_table(cfg, num_classes)
  model = build_model(cfg, num_classes, text_table)
  return model, convert.dit_from_torch(state, model, model_space_shape(cfg, image_shape)[-1])


def conditional_model_fn(model, params, labels: jax.Array, text_table, scale: float,
                         num_classes: int, num_guided_channels: int):
  """The model_fn(x [B, ...], t [B]) a sampler calls: the model for `labels` [B].

  Guided with `scale` on the first `num_guided_channels` channels of the prediction (the
  null class is `num_classes`); scale 1 is the conditional model alone, in one call.
  """
  def apply_fn(x, t, y):
    out = model.apply(params, x, t, y, train=False, text_table=text_table)
    return out[0] if isinstance(out, tuple) else out  # drop REPA extras.

  if scale == 1.0:
    return lambda x, t: apply_fn(x, t, labels)
  guided = guidance.cfg_model_fn(apply_fn, scale, num_classes, num_guided_channels)
  return lambda x, t: guided(x, t, labels)


@functools.partial(jax.jit, static_argnames=('model', 'sampler', 'sit', 'pixel', 'shape',
                                              'num_classes', 'transport_path'))
def _sample(params, labels, key, text_table, *, model, sampler, sit: bool, pixel: bool, shape,
            num_classes: int, transport_path: str):
  """Model-space samples [B, *shape] for labels [B]; sampler = (method, steps, scale, k)."""
  method, steps, scale, num_guided_channels = sampler
  model_fn = conditional_model_fn(model, params, labels, text_table, scale, num_classes,
                                  num_guided_channels)
  k_init, k_loop = jax.random.split(key)
  x_init = jax.random.normal(k_init, (labels.shape[0],) + shape)
  if sit:
    # The path the model was trained on: the SDE's score and noise depend on it.
    transport = transport_lib.create_transport(transport_path)
    if method == 'ode':
      return transport.ode_sample(model_fn, x_init, steps)
    return transport.sde_sample(model_fn, x_init, steps, k_loop)
  diffusion = gaussian.create_diffusion(str(steps), DIFFUSION_STEPS)
  if method == 'ddpm':
    return diffusion.p_sample_loop(model_fn, x_init, k_loop, clip_denoised=pixel)
  return diffusion.ddim_sample_loop(model_fn, x_init, k_loop, clip_denoised=pixel)


def sample_model_space(train_cfg, model, params, labels, key: jax.Array,
                       sampler_cfg: ml_collections.ConfigDict, num_classes: int,
                       image_shape, text_table=None) -> jax.Array:
  """Samples [B, *model_space_shape] for `labels` [B]: pixels in [-1, 1] or scaled latents.

  The arguments are `generate`'s.
  """
  check_sampler(train_cfg, sampler_cfg)
  shape = model_space_shape(train_cfg, image_shape)
  sampler = (sampler_cfg.method, int(sampler_cfg.steps), float(sampler_cfg.cfg_scale),
             guided_channels(train_cfg, sampler_cfg, shape[-1]))
  return _sample(params, jnp.asarray(labels, jnp.int32), key, text_table, model=model,
                 sampler=sampler, sit=family(train_cfg) == 'SiT',
                 pixel=train_cfg.space == 'pixel', shape=shape, num_classes=num_classes,
                 transport_path=train_cfg.transport_path)


def generate(train_cfg, model, params, labels, key: jax.Array,
             sampler_cfg: ml_collections.ConfigDict, num_classes: int, image_shape,
             text_table=None, vae=None) -> np.ndarray:
  """uint8 images [B, H, W, C] for `labels` [B], from a model trained as config.train says.

  Args:
    train_cfg: config.train of the run (model family, space, VAE scale, transport path).
    model, params: the DiT / SiT and its (EMA) parameters.
    labels: [B] int class labels (a numpy or a sharded jax array).
    key: PRNG key of the initial noise and the sampler's noise.
    sampler_cfg: a `defaults.sampler()` section.
    num_classes: the classes of the model (the null class of guidance is this index).
    image_shape: (H, W, C) of the images the model was trained on.
    text_table: the class text embeddings (a TextTable), if the model uses them.
    vae: (module, params) of the SD-VAE for latent models.
  """
  x = sample_model_space(train_cfg, model, params, labels, key, sampler_cfg, num_classes,
                         image_shape, text_table)
  return to_images(train_cfg, x, vae)


def to_images(train_cfg, x: jax.Array, vae=None) -> np.ndarray:
  """Model-space samples [B, h, w, c] -> uint8 images [B, H, W, C] (the SD-VAE decodes
  latents; `vae` is its (module, params))."""
  if train_cfg.space == 'latent':
    vae_model, vae_params = vae
    x = vae_model.apply(vae_params, x / train_cfg.vae.scale, method='decode')
  return batching.to_host(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8))

