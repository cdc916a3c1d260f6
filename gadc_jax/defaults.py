"""Default config sections, as plain data: ml_collections only, never JAX or TensorFlow.

Config files (configs/*.py) build on these, so reading a config loads no framework. Each
function returns a fresh ConfigDict for one section of the experiment config:

    config.data        data()            the dataset and its preprocessing
    config.classifier  classifier()      the train_classifier job
    config.features    features()        the features job
    config.select      select()          the select job, every method's options by name
    config.train       train()           the train job (DiT / SiT)
    config.sample      sample()          the sample job
    config.evaluate    evaluate()        the evaluate job

The libraries read these fields; their meaning is documented here, once.
"""

import ml_collections

# Selection methods by name (`config.select.method`); gadc_jax.selection.methods maps each
# to its function.
METHODS = ('gadc', 'random', 'herding', 'kcenter', 'ccs', 'dq', 'd2c')

# The public GADC release's settings per encoder (spec, "Encoder presets"); everything else
# (kappa 1.05, w_mom 1, s_mom 6, R 30, tau 0) is shared and lives in `gadc()`.
ENCODER_PRESETS = {
    'inception_v3': {'epsilon': 12.0, 'w_ce': 1200.0},
    'googlenet': {'epsilon': 12.0, 'w_ce': 300.0},
    'resnet34': {'epsilon': 20.0, 'w_ce': 10.0},
    'resnet50': {'epsilon': 20.0, 'w_ce': 10.0},
}

# Partial OT solves (gadc_jax.transport.partial_ot): L1 error of the column marginal (total
# mass kappa ~ 1) at which a Sinkhorn solve counts as converged, and its iteration cap.
SINKHORN_THRESHOLD = 1e-5
SINKHORN_MAX_ITERATIONS = 2000

# Stable Diffusion's VAE latent scale (DiT and SiT train on latents times this).
LATENT_SCALE = 0.18215

EVALUATION_METRICS = ('fid', 'is', 'precision', 'recall', 'sfid')


def parse_args(arg: str | None, **known) -> ml_collections.ConfigDict:
  """A config file's argument `name=value,name=value` -> `known` updated, as a ConfigDict.

  `known` names every argument with its default; values take the default's type. An unknown
  name or an unreadable value is a ValueError naming it.
  """
  values = dict(known)
  for item in filter(None, (arg or '').split(',')):
    name, sep, value = item.partition('=')
    if not sep or name not in known:
      raise ValueError(f'config argument {item!r}: expected NAME=VALUE with NAME one of '
                       f'{", ".join(known)}')
    default = known[name]
    if isinstance(default, bool):
      if value not in ('True', 'False', 'true', 'false', '1', '0'):
        raise ValueError(f'config argument {name}={value!r}: expected True or False')
      values[name] = value in ('True', 'true', '1')
    else:
      values[name] = type(default)(value)
  return ml_collections.ConfigDict(values)


def data() -> ml_collections.ConfigDict:
  """config.data: the embedded default, `gadc_digits` at its native 8x8."""
  return ml_collections.ConfigDict({
      'name': 'gadc_digits',   # a TFDS name, or 'folder' (data.folder: root/<class>/<image>).
      'data_dir': '',          # TFDS data dir ('' = TFDS's default).
      'manual_dir': '',        # archives of a manual-download dataset (e.g. imagenet2012).
      'folder': '',
      'image_size': 8,         # ADM centre crop to this size (native size for gadc_digits).
      'download': False,       # let TFDS download (never without this flag).
  })


def classifier() -> ml_collections.ConfigDict:
  """config.classifier: the networks of config.networks that the train_classifier job trains."""
  return ml_collections.ConfigDict({
      'networks': ('selection', 'evaluation'),
      'train_split': 'train',
      'eval_split': 'test',
      'steps': 600,
      'batch_size': 128,
      'learning_rate': 3e-3,
      'weight_decay': 1e-4,
      'log_every': 100,
      'checkpoint_every': 200,
  })


def features() -> ml_collections.ConfigDict:
  """config.features: which networks embed which splits, and how the work is cut."""
  return ml_collections.ConfigDict({
      'networks': ('selection', 'evaluation'),
      'splits': ('train',),
      'batch_size': 256,
      'shard_size': 512,
      'probs_topk': 0,         # 0 keeps every class probability; k > 0 keeps the top k.
  })


def gadc(encoder: str | None = None) -> ml_collections.ConfigDict:
  """GADC's options (spec's defaults), optionally with an encoder preset applied."""
  cfg = ml_collections.ConfigDict({
      'kappa': 1.05,
      'delta_factor': 0.05,
      'epsilon': 20.0,
      # Relative epsilon: epsilon_rel * mean class cost; overrides `epsilon` when set. It is
      # the scale-free choice: the presets' absolute epsilon assumes their encoder's scale.
      'epsilon_rel': ml_collections.config_dict.placeholder(float),
      'w_mom': 1.0,
      's_mom': 6.0,
      'w_ce': 10.0,
      'w_ent': 0.0,
      'w_kl': 0.0,
      'temperature': 1.0,
      'rounds': 30,            # R: swap-refinement rounds; 0 disables refinement.
      'tau': 0.0,              # candidate filter on max_k p_i(k).
      'mode': 'fast',          # 'fast' (screened, warm-started) or 'exhaustive' (spec).
      'sinkhorn_threshold': SINKHORN_THRESHOLD,
      'sinkhorn_max_iterations': SINKHORN_MAX_ITERATIONS,
      'shortlist': 32,         # fast mode: exact solves per greedy step / refinement round.
  })
  if encoder is not None:
    if encoder not in ENCODER_PRESETS:
      raise ValueError(f'unknown encoder preset {encoder!r}; known: {sorted(ENCODER_PRESETS)}')
    cfg.update(ENCODER_PRESETS[encoder])
  return cfg


def method(name: str) -> ml_collections.ConfigDict:
  """The options of selection method `name` (config.select.<name>)."""
  options = {
      'gadc': gadc,
      'random': dict,
      'herding': dict,
      'kcenter': dict,
      'ccs': lambda: dict(beta=0.1, num_strata=50),
      'dq': lambda: dict(num_bins=10),
      'd2c': lambda: dict(interval=4, mode='nearest', target=0.40),
  }
  if name not in options:
    raise ValueError(f'unknown selection method {name!r}; known: {", ".join(METHODS)}')
  return ml_collections.ConfigDict(options[name]())


def diagnostics() -> ml_collections.ConfigDict:
  """Geometry diagnostics of a selection (gadc_jax.transport.diagnostics)."""
  return ml_collections.ConfigDict({
      'knn_k': 5,
      'pot_kappa': 1.05,
      'pot_delta_factor': 0.05,
      'pot_epsilon_rel': 0.05,
  })


def select() -> ml_collections.ConfigDict:
  """config.select: the select job; every method's options sit under its own name."""
  config = ml_collections.ConfigDict({
      'method': 'gadc',
      'budget': '10%',         # '10%' of the split, '1000' images, or '10/class'.
      'seed': 0,
      'network': 'selection',  # feature space (and classifier) the method selects in.
      'split': 'train',
      'eval_networks': ('evaluation',),  # further spaces the diagnostics are computed in.
      'classes_per_batch': 16,
      'name': '',              # output folder; '' = METHOD-BUDGET-seedSEED.
      'grid_classes': 10,
      'grid_per_class': 10,
      'diagnostics': diagnostics(),
  })
  for name in METHODS:
    config[name] = method(name)
  return config


def sampler() -> ml_collections.ConfigDict:
  """How a DiT / SiT samples (train's grids, the sample job)."""
  return ml_collections.ConfigDict({
      'method': 'ddpm',        # DiT: ddpm | ddim; SiT: ode | sde.
      'steps': 250,
      'cfg_scale': 1.5,
      'guided_channels': 0,    # 0: every noise/velocity channel (3 reproduces DiT's release).
  })


def train() -> ml_collections.ConfigDict:
  """config.train: a DiT (Gaussian diffusion) or SiT (transport) on a selection or a split."""
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
          'scale': LATENT_SCALE,
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
      'sampler': sampler(),
      # D2C's Attach (a): per-class text embeddings, a .npy [num_classes, tokens, width].
      'text_embeddings': '',
      # D2C's Attach (b), REPA: align the tokens after block model_overrides.repa_depth to
      # precomputed encoder patch features, a .npy [num_examples_of_split, tokens, width]
      # (e.g. DINOv2-B patch tokens), by negative cosine similarity with this weight.
      'repa': ml_collections.ConfigDict({'features': '', 'weight': 0.5}),
  })


def sample() -> ml_collections.ConfigDict:
  """config.sample: class-balanced samples of the train run that config.train names."""
  return ml_collections.ConfigDict({
      'name': '',              # output folder; '' = the train run's name.
      'num_samples': 1000,     # class-balanced: labels cycle through the classes.
      'batch_size': 250,
      'seed': 0,
      'sampler': sampler(),
  })


def evaluate() -> ml_collections.ConfigDict:
  """config.evaluate: metrics of a samples file in the spaces of named networks."""
  return ml_collections.ConfigDict({
      'samples': '',                   # a samples .npz; '' = the sample job's output.
      'reference': 'split:train',      # 'split:NAME' of config.data, or an ADM reference .npz.
      'networks': ('evaluation',),     # feature spaces: names in config.networks.
      'metrics': EVALUATION_METRICS,
      'batch_size': 256,
      'k': 3,                          # neighbourhood size of precision / recall.
      'is_splits': 10,
      'out_name': '',                  # '' = the sample job's name.
      'step': 0,                       # TensorBoard step (e.g. the training step sampled).
      # The network whose features the statistics stored in an ADM reference .npz are in
      # (TF Inception pool_3 / mixed_6 of the whole dataset); other networks use arr_0.
      'adm_stats_network': 'inception',
  })
