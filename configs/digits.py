"""The embedded default: the whole pipeline on scikit-learn's UCI digits, on a laptop CPU.

    python main.py --config=configs/digits.py --workdir=workdir/digits

Stages: two classifiers (selection network, evaluation network), features of the train split
in both spaces, then a GADC selection of 10% of the train split scored in both spaces.
"""

import ml_collections

from gadc_jax.data import input_pipeline
from gadc_jax.selection import select_job


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.job = 'pipeline'
  config.stages = ('train_classifier', 'features', 'select')

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
  return config
