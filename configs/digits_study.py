"""The study on the embedded digits: which 10% of the train split trains the better DiT.

    python main.py --config=configs/digits_study.py --workdir=workdir/digits-study
    python main.py --config=configs/digits_study.py:smoke=True --workdir=workdir/study-smoke

The grid: methods random, herding, kcenter, ccs, dq, d2c and gadc, and GADC's five ablations
(no OT term, no moment term, no CE term, kappa = 1, no refinement), each at 10% with seeds
0, 1, 2, plus the full-data reference: 37 cells. Every cell trains the digits DiT of
configs/digits.py on its selection, samples it, evaluates the samples in the evaluation
network's space against the train and the test split, and scores them by CAS.

The cell is calibrated so that its samples are digits (see `_CELL`); the shared stages are
configs/digits.py's. The README gives the whole study's time on a 2-core CPU.

Arguments (`:name=value,...`): smoke=True: methods random and gadc, seeds 0 and 1, no
ablations, the full reference, at configs/digits.py's smoke sizes (seconds per cell).
"""

import os
import runpy

import ml_collections

from gadc_jax import defaults

_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.py')

# The calibrated cell. Measured alone on the 2-core CPU with configs/digits.py's GADC 10%
# selection, 500 samples of 50 DDPM steps, evaluation in the evaluation network's space:
#   DiT hidden 128, 500 steps, lr 1e-3 (the first calibration): FID 86-97, CAS 0.07-0.14;
#     the samples are not yet digits, so every method looks alike.
#   hidden 64, 1000 steps, lr 2e-3: FID 31.0 (36 s of training);
#   hidden 128, 1000 steps, lr 2e-3: FID 7.9 (77 s);
#   hidden 64, 1500 steps, lr 2e-3: FID 8.8 (54 s): the cell below.
# configs/digits.py's run (hidden 128, 2000 steps, 1,000 samples of 100 steps) gives 8.6.
_CELL = {'train_steps': 1500, 'hidden': 64, 'learning_rate': 2e-3, 'num_samples': 500,
         'sampler_steps': 50}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, smoke=False)
  config = runpy.run_path(_DIGITS)['get_config'](f'smoke={args.smoke}')
  config.job = 'study'
  config.study = defaults.study()
  config.study.methods = ('random', 'herding', 'kcenter', 'ccs', 'dq', 'd2c', 'gadc')
  # Two cells side by side use the 2-core CPU's cores better than one (jobs/study.py).
  config.study.workers = 2
  if args.smoke:
    config.study.methods = ('random', 'gadc')
    config.study.seeds = (0, 1)
    config.study.ablations = ml_collections.ConfigDict()
    config.study.cas.steps = 20
    config.evaluate.kid_subsets = 10
  else:
    config.train.steps = _CELL['train_steps']
    config.train.model_overrides.hidden = _CELL['hidden']
    config.train.learning_rate = _CELL['learning_rate']
    config.sample.num_samples = _CELL['num_samples']
    config.sample.sampler.steps = config.train.sampler.steps = _CELL['sampler_steps']
  return config
