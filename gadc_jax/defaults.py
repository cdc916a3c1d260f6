"""Default config sections, as plain data: ml_collections only, never JAX or TensorFlow.

Config files (configs/*.py) build on these, so reading a config loads no framework. Each
function returns a fresh ConfigDict for one section of the experiment config:

    config.data             data()             the dataset and its preprocessing
    config.classifier       classifier()       the train_classifier job
    config.features         features()         the features job
    config.difficulty       difficulty()       the difficulty job (D2C's scores; its scorer run)
    config.select           select()           the select job, every method's options by name
    config.text_embeddings  text_embeddings()  class names through a T5 encoder (D2C Attach a)
    config.repa_targets     repa_targets()     REPA's patch tokens of the training images
    config.train            train()            the train job (DiT / SiT)
    config.sample           sample()           the sample job
    config.evaluate         evaluate()         the evaluate job
    config.report           report()           the report job (a study's tables and plots)
    config.export           export()           the export job (a selection as image files)
    config.distill_sample   distill_sample()   OT-guided sampling of a distilled set (OTG)
    config.study            study()            the study job (a grid of cells, CAS)
    config.train_students   train_students()   students on an image set (LIA + OTM)
    config.distill          distill()          the distill job's grid of rows, IPCs and seeds

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

EVALUATION_METRICS = ('fid', 'kid', 'is', 'precision', 'recall', 'sfid')


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
      'w_pot': 1.0,            # weight of the partial OT term (0: the no-OT ablation).
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
      # similarity: 'gradient' (the release's cosine of last-layer gradients) or
      # 'euclidean' (squared distances of the features, the paper's Eq. 3).
      'dq': lambda: dict(num_bins=10, similarity='gradient'),
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
      # How a total ('10%', '1000') is split over classes: 'balanced' (evenly) or
      # 'proportional' (to class sizes, each class >= 1); see selection/budget.py.
      'allocation': 'balanced',
      # A class smaller than its quota: 'error', or 'take_all' (all its images; the total
      # then falls short).
      'small_classes': 'error',
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
      # Leading prediction channels that guidance mixes; 0: as the releases do in
      # config.train.space: the first 3 of the 4 SD-VAE latent channels (DiT's and SiT's
      # forward_with_cfg), every channel in pixel space.
      'guided_channels': 0,
  })


def text_embeddings() -> ml_collections.ConfigDict:
  """config.text_embeddings: the class names of config.train.split through the T5 encoder
  of a local checkpoint folder, as D2C's Attach conditions on them (FLAN-T5-XL, 16 tokens)."""
  return ml_collections.ConfigDict({
      # A local transformers folder of FLAN-T5 (or any T5 v1.1 / T5): config.json, the
      # weights (model.safetensors, its sharded index, or pytorch_model.bin) and
      # tokenizer.json. Nothing is downloaded.
      'checkpoint': '',
      # '' = the dataset's label names; else a text file of lines 'LABEL TEXT', LABEL a label
      # name of the dataset and TEXT what the encoder reads for it (ImageNet's
      # LOC_synset_mapping.txt has this form: 'n01440764 tench, Tinca tinca').
      'class_names': '',
      'tokens': 16,            # padded / truncated to this many (</s> kept last).
      'batch_size': 64,
      'name': '',              # output folder; '' = the checkpoint folder's name.
  })


def repa_targets() -> ml_collections.ConfigDict:
  """config.repa_targets: the patch tokens of network config.train.repa.features (e.g.
  DINOv2-B at 224 px) for the images config.train trains on, stored float16 beside the
  selection."""
  return ml_collections.ConfigDict({
      'batch_size': 64,
      'shard_size': 1000,      # images per resumable file.
  })


def train() -> ml_collections.ConfigDict:
  """config.train: a DiT (Gaussian diffusion) or SiT (transport) on a selection or a split."""
  return ml_collections.ConfigDict({
      'name': '',                # output folder; '' = MODEL-SELECTION (or MODEL-SPLIT).
      'model': 'DiT-S/2',        # a name of models.dit.DIT_CONFIGS: DiT-* or SiT-*.
      # A published checkpoint of `model` in the DiT release's layout (a local .pt, read
      # with torch, or .safetensors): the sample jobs' generator instead of a train run
      # ('' = the train run); the train job refuses to train while it is set.
      'weights': '',
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
      # Clip the gradients' global norm to this before AdamW; 0 = off (DiT's release).
      # REPA's release clips at 1.0.
      'grad_clip': 0.0,
      'ema_decay': 0.9999,
      'class_dropout': 0.1,
      'flip': False,             # random horizontal flips (REPA targets mirrored with them).
      'seed': 0,
      'fsdp': 1,                 # size of the "fsdp" mesh axis (1: data parallel only).
      'bfloat16': False,
      # DiT/SiT block rematerialisation: 'none' | 'block' | 'dots' (models/dit.py REMAT_POLICIES);
      # memory for recomputation, never a different value.
      'remat': 'none',
      # How blocks compute attention: 'auto' | 'einsum' | 'xla' | 'cudnn' (models/dit.py
      # ATTENTION_IMPLEMENTATIONS); 'auto' is the fused cuDNN kernel for bfloat16 on GPUs.
      'attention': 'auto',
      'transport_path': 'linear',  # SiT only.
      'log_every': 100,
      'checkpoint_every': 1000,
      # Besides the latest two, keep the checkpoints of steps that are multiples of this (a
      # multiple of checkpoint_every); 0: the latest two only.
      'keep_every': 0,
      'sample_every': 0,         # 0: a grid at the end only.
      'grid_per_class': 8,
      'sampler': sampler(),
      # D2C's Attach (a): per-class text embeddings, a .npz of the text_embeddings job with
      # 'tokens' [num_classes, tokens, width] and 'mask' [num_classes, tokens].
      'text_embeddings': '',
      # D2C's Attach (b), REPA: align the tokens after block model_overrides.repa_depth to
      # the patch tokens [tokens, width] of each training image under the network of
      # config.networks named `features` ('' = no REPA; e.g. DINOv2-B patch tokens), which
      # the repa_targets job stores, by negative cosine similarity with this weight.
      'repa': ml_collections.ConfigDict({'features': '', 'weight': 0.5}),
  })


def difficulty() -> ml_collections.ConfigDict:
  """config.difficulty: D2C's per-image diffusion difficulty (gadc_jax.difficulty), read by
  select.method d2c. D2C's paper does not pin the timesteps or the draws: these are ours."""
  scorer = train()
  scorer.selection = ''        # the whole split, as D2C's scorer sees it.
  return ml_collections.ConfigDict({
      'split': 'train',
      # Timesteps of the 1000-step process, spread over it; each image's loss is averaged
      # over all of them and num_noise fixed noise draws (seeded by position in the split).
      'timesteps': (100, 300, 500, 700, 900),
      'num_noise': 2,
      'seed': 0,
      'batch_size': 256,
      'shard_size': 512,
      # The scorer: a config.train section (a DiT) whose train run scores the images; the
      # pipeline trains it (the train job on config.train = this) before the difficulty stage.
      'scorer': scorer,
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
      # KID: the mean and std of the unbiased MMD^2 over kid_subsets random subsets of
      # kid_subset_size images of each set (at most: capped at the smaller set's size, as
      # clean-fid's max_subset_size), drawn from kid_seed.
      'kid_subsets': 100,
      'kid_subset_size': 1000,
      'kid_seed': 0,
      'out_name': '',                  # '' = the sample job's name.
      'step': 0,                       # TensorBoard step (e.g. the training step sampled).
      # Against an ADM reference .npz: the network that stands for ADM's TF Inception. It
      # sees samples and arr_0 as ADM's evaluator feeds them (TF1 bilinear resize to 299,
      # (x - 128) / 128), and its FID / sFID use the file's statistics (pool_3 / mixed_6 of
      # the whole dataset) where present. Other networks use arr_0 as any images.
      'adm_stats_network': 'inception',
  })


def report() -> ml_collections.ConfigDict:
  """config.report: the report job, rebuilding ROOT/report/ from a study's cells."""
  return ml_collections.ConfigDict({
      'root': '',              # folder of study.json and cells/; '' = the workdir.
      'metrics': (),           # metric keys in the tables and plots; () = every one found.
      'confidence': 0.95,      # of the Student t intervals over seeds.
      'fid_metric': 'fid_evaluation.train',  # what the diagnostics are plotted against.
      'grid_classes': 4,       # selections plot: the first classes, a row each,
      'grid_per_class': 8,     # and the first images of each.
  })


def export() -> ml_collections.ConfigDict:
  """config.export: the export job, a selection as an image folder any codebase reads."""
  return ml_collections.ConfigDict({
      # A folder of WORKDIR/selections, or a cell of WORKDIR/cells (its selection).
      'selection': '',
      # 'files': PNGs of the images as the pipeline reads them (data.image_size); 'links':
      # symbolic links to the original files of an image-folder dataset (data.name
      # 'folder'; other datasets have no files to point at, so they get 'files').
      'mode': 'files',
      'dir': '',               # output folder; '' = WORKDIR/exports/SELECTION.
  })


def distill_sample() -> ml_collections.ConfigDict:
  """config.distill_sample: IPC images per class from the train run config.train names,
  guided by IGD's influence and deviation terms and the OT term (shared/SPEC_DISTILL.md;
  gadc_jax.distill.sampler). Values the paper does not publish are this project's choices,
  not tuned."""
  return ml_collections.ConfigDict({
      'name': '',              # output folder; '' = GUIDANCE-ipcIPC-seedSEED.
      'ipc': 10,               # images per class.
      'seed': 0,
      # Batch limits. The sampler holds each class's earlier samples in a buffer of IPC
      # slots that every guided step reads (deviation, OT): an IPC above max_ipc is refused
      # before any work. class_batch: classes sampled together in one call (0 = all).
      'max_ipc': 100,
      'class_batch': 0,
      # IGD's sampler: DDPM, 50 steps, CFG 4.0.
      'sampler': ml_collections.ConfigDict({'method': 'ddpm', 'steps': 50, 'cfg_scale': 4.0,
                                            'guided_channels': 0}),
      # Guided sampler steps [start, end), counted from the first (noisiest): IGD's [30, 45]
      # of 50.
      'window': (30, 45),
      # rho (influence), gamma (deviation), beta_1 (OT); 0 turns a term off. With
      # `normalize` each is a step length in model space (l2 per sample).
      'scales': ml_collections.ConfigDict({'influence': 0.1, 'deviation': 0.1, 'ot': 0.1}),
      'normalize': True,
      'ot': ml_collections.ConfigDict({
          'epsilon_rel': 0.05,   # epsilon relative to the mean l1 cost of the set.
          'num_real': 100,       # R real samples of the class (at most the class's size).
          # Gradient through x0_hat with the model's eps held fixed (the cheap form); the
          # form through the model is not implemented.
          'stop_gradient': True,
          'sinkhorn_iterations': 20,  # per guided step, warm-started from the last.
          'sinkhorn_threshold': 1e-3,
      }),
      'deviation': ml_collections.ConfigDict({'memory': 64}),  # latest earlier samples.
      # The influence term's surrogates: names of config.networks (each trained by
      # train_classifier, or a converted checkpoint); IGD's several checkpoints of one
      # ConvNet are here several seeds of it. num_real: real images per class of the mean
      # real gradient (at most the class's size).
      'surrogate': ml_collections.ConfigDict({'networks': ('selection',), 'num_real': 200}),
      'real_split': 'train',   # where the real samples of both terms come from.
  })


# GADC's ablations (config.study.ablations): name -> overrides of the config, one term of
# J(S) (or the refinement, or the partial transport's slack) switched off at a time.
GADC_ABLATIONS = {
    'no_ot': {'select': {'gadc': {'w_pot': 0.0}}},
    'no_moment': {'select': {'gadc': {'w_mom': 0.0}}},
    'no_ce': {'select': {'gadc': {'w_ce': 0.0}}},
    'kappa_1': {'select': {'gadc': {'kappa': 1.0}}},
    'no_refinement': {'select': {'gadc': {'rounds': 0}}},
}


def study() -> ml_collections.ConfigDict:
  """config.study: the study job's grid (gadc_jax.study) and its per-cell metrics."""
  return ml_collections.ConfigDict({
      'methods': ('random', 'gadc'),
      'budgets': ('10%',),
      'seeds': (0, 1, 2),
      # name -> nested overrides of the config (GADC_ABLATIONS' form); each runs GADC.
      'ablations': ml_collections.ConfigDict(GADC_ABLATIONS),
      'full_reference': True,  # one cell trained on the whole split.
      # Every cell's samples are evaluated against each of these references (name ->
      # config.evaluate.reference); metric keys end in .NAME (e.g. fid_evaluation.test).
      'references': ml_collections.ConfigDict({'train': 'split:train', 'test': 'split:test'}),
      'baseline_group': 'random',  # what the report compares the other rows against.
      # Keep compiled programs in WORKDIR/jax_cache: cells of one shape compile once.
      'compilation_cache': True,
      # Threads running selections and cells side by side (1 on several processes; see
      # gadc_jax/jobs/study.py).
      'workers': 1,
      # CAS: a classifier of this network's arch and seed trained on the cell's samples,
      # scored by its top-1 accuracy on the real `split`.
      'cas': ml_collections.ConfigDict({
          'network': 'evaluation',
          'split': 'test',
          'steps': 600,
          'batch_size': 128,
          'learning_rate': 3e-3,
          'weight_decay': 1e-4,
      }),
  })


def lia() -> ml_collections.ConfigDict:
  """LIA's soft labels (gadc_jax.distill.soft_labels): teachers of config.networks trained
  on the whole real train split; the number used follows the image set's IPC."""
  return ml_collections.ConfigDict({
      'pool': ('teacher_a', 'teacher_b', 'teacher_c', 'teacher_d'),  # in order of use.
      # IPC -> teachers (the first k of the pool); an IPC between keys takes the entry of
      # the largest key below it.
      'teachers_per_ipc': ml_collections.ConfigDict({'1': 1, '10': 2, '50': 4}),
      'fixed_teachers': 0,     # > 0: this many whatever the IPC (the "without LIA" row).
      'temperature': 1.0,      # of the teachers' softmax.
      'mode': 'per_view',      # 'per_view' (each augmented view, as RDED/FKD) or 'once'.
  })


def otm() -> ml_collections.ConfigDict:
  """OTM's loss (gadc_jax.distill.otm): kappa1 CE + kappa2 MSE + beta2 SD. The weights are
  not published; SD's temperature, epsilon and rounds are SinKD's."""
  return ml_collections.ConfigDict({
      'kappa1': 1.0,
      'kappa2': 1.0,
      'beta2': 0.05,
      'temperature': 2.0,
      'epsilon': 0.1,
      'iterations': 20,
  })


def train_students() -> ml_collections.ConfigDict:
  """config.train_students: students of config.networks trained from scratch on an image set
  with OTM and LIA (or hard labels alone), scored by top-1 on the real eval split."""
  return ml_collections.ConfigDict({
      'images': '',            # 'distilled:NAME' or 'selection:NAME'.
      'name': '',              # output folder; '' = KIND-NAME-LABELS.
      'students': ('student_cnn',),
      'labels': 'soft',        # 'soft' (OTM with LIA's labels) or 'hard' (CE alone).
      'split': 'train',        # the split a selection indexes.
      'eval_split': 'test',
      'seed': 0,
      'steps': 400,
      'batch_size': 64,
      'learning_rate': 3e-3,
      'weight_decay': 0.01,
      'warmup_steps': 0,
      # Augmentation: a random-resized crop (torchvision's RandomResizedCrop: a box of a
      # fraction resized_crop_scale = (min, max) of the area, aspect ratio (width / height) in
      # resized_crop_ratio, resized back; () = off), then shifts of up to `shift` pixels (edge
      # padding, random crop) and flips.
      'augment': ml_collections.ConfigDict({
          'shift': 1, 'flip': False, 'resized_crop_scale': (),
          'resized_crop_ratio': (3 / 4, 4 / 3)}),
      'lia': lia(),
      'otm': otm(),
  })


def distill() -> ml_collections.ConfigDict:
  """config.distill: the distill job's cells, every row at every IPC and seed."""
  return ml_collections.ConfigDict({
      'ipcs': (1, 10),
      'seeds': (0, 1, 2),
      # The paper's ablation (gadc_jax.jobs.distill.ROWS), then the real-image baselines.
      'rows': ('igd', 'igd+otg', 'no_otg', 'no_lia', 'no_otm', 'full', 'random', 'herding',
               'gadc'),
  })
