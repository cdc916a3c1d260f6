"""The embedded default: the whole pipeline on scikit-learn's UCI digits, on a laptop CPU.

    python main.py --config=configs/digits.py --workdir=workdir/digits
    python main.py --config=configs/digits.py:smoke=True --workdir=workdir/digits-smoke

Stages: two classifiers (selection network, evaluation network), features of the train split
in both spaces, a GADC selection of 10% of the train split scored in both spaces, a small DiT
trained on the selection in pixel space, class-balanced samples with classifier-free guidance,
and their FID / IS / precision / recall in the evaluation network's space. The difficulty
stage runs only for a method that reads it (`--config.select.method=d2c`): it trains the
same DiT on the whole train split for 400 steps, then scores every image with it.

Arguments (`:name=value,...`): smoke=True runs every stage with tiny step and sample counts
(seconds of work; its numbers mean nothing).
"""

import ml_collections

from gadc_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, smoke=False)
  config = ml_collections.ConfigDict()
  config.job = 'pipeline'
  config.stages = ('train_classifier', 'features', 'difficulty', 'select', 'train', 'sample',
                   'evaluate')

  config.data = defaults.data()

  # Networks by role. Keys other than arch and seed are the module's arguments.
  config.networks = ml_collections.ConfigDict({
      'selection': {'arch': 'digits_cnn', 'seed': 0, 'width': 32},
      'evaluation': {'arch': 'digits_mlp', 'seed': 1, 'width': 128},
  })

  config.classifier = defaults.classifier()
  config.features = defaults.features()

  config.select = defaults.select()
  config.select.method = 'gadc'
  config.select.budget = '10%'

  # D2C's Attach inputs, off here (set a T5 checkpoint folder and a REPA network to use).
  config.text_embeddings = defaults.text_embeddings()
  config.repa_targets = defaults.repa_targets()

  # A small DiT on the 8x8 pixels of the selection (16 tokens of 2x2 patches).
  config.train = defaults.train()
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

  config.sample = defaults.sample()
  config.sample.num_samples = 1000
  config.sample.batch_size = 500
  config.sample.sampler.steps = 100

  config.evaluate = defaults.evaluate()
  config.evaluate.networks = ('evaluation',)
  config.evaluate.reference = 'split:train'

  # The report job (a study's tables and plots) and the export job (a selection as files).
  config.report = defaults.report()
  config.export = defaults.export()

  if args.smoke:
    config.classifier.steps = 20
    config.classifier.log_every = config.classifier.checkpoint_every = 10
    config.select.gadc.rounds = 2
    config.train.model_overrides = ml_collections.ConfigDict(
        {'depth': 1, 'hidden': 32, 'heads': 2})
    config.train.steps = 4
    config.train.log_every = config.train.checkpoint_every = 2
    config.train.grid_per_class = 2
    config.train.sampler.steps = 4
    config.sample.num_samples = 40
    config.sample.batch_size = 20
    config.sample.sampler.steps = 4

  # D2C's scorer: the DiT above, trained on the whole train split (1,437 images) for a short
  # run; the difficulty stage scores every image by its denoising loss.
  config.difficulty = defaults.difficulty()
  config.difficulty.scorer = config.train.copy_and_resolve_references()
  config.difficulty.scorer.selection = ''
  config.difficulty.scorer.steps = 4 if args.smoke else 400
  config.difficulty.scorer.checkpoint_every = 2 if args.smoke else 200
  return config
