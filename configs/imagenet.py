"""The paper's ImageNet setups (see shared SPEC_TRAINING): select, train DiT-L/2 or SiT-L/2 on
SD-VAE latents of the subset, sample 50,000 images and score them against ADM's reference.

    python main.py --config=configs/imagenet.py:dit,10/class --workdir=gs://BUCKET/run \\
      --config.data.manual_dir=/data/imagenet \\
      --config.networks.selection.checkpoint=/weights/inception_v3_google.pth \\
      --config.networks.inception.checkpoint=/weights/pt_inception-2015-12-05.pth \\
      --config.train.vae.checkpoint=/weights/sd-vae-ft-ema.safetensors \\
      --config.evaluate.reference=/data/VIRTUAL_imagenet256_labeled.npz

The argument is `MODEL,BUDGET` with MODEL dit or sit (DiT-L/2 with 250 DDPM steps and CFG 1.5,
or SiT-L/2 with a 250-step Euler ODE) and BUDGET one of 10/class, 50/class, 100/class (10K,
50K, 100K images). Weights are local files of the published checkpoints; nothing is
downloaded. Selection uses the release's default encoder, torchvision's Inception-v3, with
its preset (epsilon 12, w_ce 1200).
"""

import ml_collections

from gadc_jax.data import input_pipeline
from gadc_jax.evaluation import evaluate
from gadc_jax.evaluation import sample
from gadc_jax.selection import objective
from gadc_jax.selection import select_job
from gadc_jax.training import train


def get_config(arg: str = 'dit,10/class') -> ml_collections.ConfigDict:
  model, budget = (arg.split(',') + ['10/class'])[:2]
  if model not in ('dit', 'sit'):
    raise ValueError(f"configs/imagenet.py: model must be 'dit' or 'sit', not {model!r}")
  config = ml_collections.ConfigDict()
  config.job = 'pipeline'
  config.stages = ('features', 'select', 'train', 'sample', 'evaluate')

  config.data = input_pipeline.default_data_config()
  config.data.name = 'imagenet2012'
  config.data.image_size = 256

  # Published weights, converted on load; set the checkpoint paths on the command line.
  config.networks = ml_collections.ConfigDict({
      'selection': {'arch': 'inception_v3', 'checkpoint': '', 'input_size': 299},
      'inception': {'arch': 'inception_v3_fid', 'checkpoint': '', 'input_size': 299,
                    'with_spatial': True},
  })
  config.classifier = ml_collections.ConfigDict({'networks': ()})

  config.features = ml_collections.ConfigDict({
      'networks': ('selection',),
      'splits': ('train',),
      'batch_size': 256,
      'shard_size': 10_000,
      'probs_topk': 0,
  })

  config.select = select_job.default_config()
  config.select.method = 'gadc'
  config.select.budget = budget
  config.select.eval_networks = ()
  config.select.gadc = objective.default_gadc_config('inception_v3')

  config.train = train.default_config()
  config.train.selection = '@select'
  config.train.model = 'DiT-L/2' if model == 'dit' else 'SiT-L/2'
  config.train.space = 'latent'
  config.train.steps = 100_000
  config.train.batch_size = 128
  config.train.learning_rate = 1e-4
  config.train.ema_decay = 0.9999
  config.train.flip = True
  config.train.checkpoint_every = 5_000
  config.train.sample_every = 10_000
  config.train.sampler.method = 'ddpm' if model == 'dit' else 'ode'

  config.sample = sample.default_config()
  config.sample.num_samples = 50_000
  config.sample.batch_size = 250
  config.sample.sampler = config.train.sampler.copy_and_resolve_references()
  config.sample.sampler.steps = 250
  config.sample.sampler.cfg_scale = 1.5 if model == 'dit' else 1.0

  config.evaluate = evaluate.default_config()
  config.evaluate.networks = ('inception',)
  config.evaluate.reference = ''  # the ADM reference batch .npz (VIRTUAL_imagenet256).
  config.evaluate.metrics = ('fid', 'sfid', 'is', 'precision', 'recall')
  return config
