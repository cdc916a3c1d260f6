"""OT generative dataset distillation on the embedded digits (`distill` job), on a CPU.

    python main.py --config=configs/digits_distill.py --workdir=workdir/digits-distill
    python main.py --config=configs/digits_distill.py:smoke=True --workdir=workdir/dd-smoke

Stages: four teachers (CNNs and MLPs of several widths and seeds) and IGD's surrogate CNN on
the whole train split; the project's small DiT trained on the whole train split (the
generator); for IPC 1 and 10 and seeds 0, 1, 2: distilled sets with OT guidance off ('igd')
and on ('igd+otg'), random / herding / GADC selections of IPC real images per class; then per
row (the paper's ablation: igd and igd+otg with hard labels; soft labels without OTG; without
LIA; without OTM; full; and the three real-image baselines with the full labelling) a CNN and
an MLP student trained from scratch. Each (row, IPC, seed) is a cell of WORKDIR/distill.

Arguments (`:name=value,...`): smoke=True runs every stage at toy sizes (one IPC, one seed;
its numbers mean nothing).
"""

import os
import runpy

import ml_collections

from gadc_jax import defaults

_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.py')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, smoke=False)
  config = ml_collections.ConfigDict()
  config.job = 'distill'
  config.data = defaults.data()

  # Teachers (LIA's pool, in order of use), the surrogate of IGD's influence term, the
  # networks the baselines select in, and the students (trained by train_students, not here).
  config.networks = ml_collections.ConfigDict({
      'teacher_a': {'arch': 'digits_cnn', 'seed': 10, 'width': 32},
      'teacher_b': {'arch': 'digits_mlp', 'seed': 11, 'width': 128},
      'teacher_c': {'arch': 'digits_cnn', 'seed': 12, 'width': 64},
      'teacher_d': {'arch': 'digits_mlp', 'seed': 13, 'width': 256},
      'surrogate': {'arch': 'digits_cnn', 'seed': 20, 'width': 16},
      'student_cnn': {'arch': 'digits_cnn', 'seed': 30, 'width': 16},
      'student_mlp': {'arch': 'digits_mlp', 'seed': 31, 'width': 64},
  })
  # The classifiers' and selections' settings and the generator are configs/digits.py's
  # (its smoke sizes with smoke=True): its DiT, trained here on the whole train split.
  digits = runpy.run_path(_DIGITS)['get_config'](f'smoke={args.smoke}')
  config.classifier = digits.classifier
  config.classifier.networks = ('teacher_a', 'teacher_b', 'teacher_c', 'teacher_d',
                                'surrogate')

  # The baselines' selections, in teacher_a's space; their diagnostics in other spaces are
  # skipped (the students' accuracy is the measure here).
  config.features = digits.features
  config.features.networks = ('teacher_a',)
  config.select = digits.select
  config.select.network = 'teacher_a'
  config.select.eval_networks = ()

  config.train = digits.train
  config.train.selection = ''

  config.distill_sample = defaults.distill_sample()
  config.distill_sample.surrogate.networks = ('surrogate',)

  config.train_students = defaults.train_students()
  config.train_students.students = ('student_cnn', 'student_mlp')
  config.train_students.lia.pool = ('teacher_a', 'teacher_b', 'teacher_c', 'teacher_d')
  config.train_students.augment.shift = 1

  config.distill = defaults.distill()
  config.report = defaults.report()  # the distill job's table and plots (report.root: set by the job)

  if args.smoke:
    config.distill_sample.sampler.steps = 4
    config.distill_sample.window = (1, 3)
    config.distill_sample.ot.num_real = 10
    config.distill_sample.surrogate.num_real = 10
    config.train_students.steps = 5
    config.distill.ipcs = (2,)
    config.distill.seeds = (0,)
  return config
