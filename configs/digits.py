"""The embedded default: the whole pipeline on scikit-learn's UCI digits, on a laptop CPU.

    python main.py --config=configs/digits.py --workdir=workdir/digits

Stages: two classifiers (selection network, evaluation network), features of the train split
in both spaces, a GADC selection of 10% of the train split scored in both spaces, a small DiT
trained on the selection in pixel space, class-balanced samples with classifier-free guidance,
and their FID / IS / precision / recall in the evaluation network's space.
"""

import ml_collections

from gadc_jax.data import input_pipeline
from gadc_jax.evaluation import evaluate
from gadc_jax.evaluation import sample
from gadc_jax.selection import select_job
from gadc_jax.training import train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.job = 'pipeline'
  config.stages = ('train_classifier', 'features', 'select', 'train', 'sample', 'evaluate')

  config.data = input_pipeline.default_data_config()

  # Networks by role. Keys other than arch and seed are the module's arguments.
  config.networks = ml_collections.ConfigDict({
      'selection': {'arch': 'digits_cnn', 'seed': 0, 'width': 32},
      'evaluation': {'arch': 'digits_mlp', 'seed': 1, 'width': 128},
  })

  config.classifier = ml_collections.ConfigDict({
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

  config.features = ml_collections.ConfigDict({
      'networks': ('selection', 'evaluation'),
      'splits': ('train',),
      'batch_size': 256,
      'shard_size': 512,
      'probs_topk': 0,       # 0 keeps every class probability; k > 0 keeps the top k.
  })

  config.select = select_job.default_config()
  config.select.method = 'gadc'
  config.select.budget = '10%'

  # A small DiT on the 8x8 pixels of the selection (16 tokens of 2x2 patches).
  config.train = train.default_config()
  config.train.selection = '@select'
  config.train.model = 'DiT-S/2'
  config.train.model_overrides = ml_collections.ConfigDict(
      {'depth': 4, 'hidden': 128, 'heads': 4})
  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.learning_rate = 1e-3
  config.train.ema_decay = 0.995  # a short run: the EMA must forget the random init.
  config.train.log_every = 250
  config.train.checkpoint_every = 1000
  config.train.sampler.steps = 100

  config.sample = sample.default_config()
  config.sample.num_samples = 1000
  config.sample.batch_size = 500
  config.sample.sampler.steps = 100

  config.evaluate = evaluate.default_config()
  config.evaluate.networks = ('evaluation',)
  config.evaluate.reference = 'split:train'
  return config
