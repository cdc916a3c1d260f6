"""The paper's ImageNet grid as a study: DiT-L/2 trained on the subsets of Random, Herding,
K-Center, D2C and GADC at 10, 50 and 100 images per class, 3 seeds each, GADC's ablations
and the full-data reference, on configs/imagenet.py's setup.

    python main.py --config=configs/imagenet_study.py --workdir=gs://BUCKET/study \\
      --config.data.manual_dir=/data/imagenet \\
      --config.networks.selection.checkpoint=/weights/inception_v3_google.pth \\
      --config.networks.evaluation.checkpoint=/weights/dinov2-base.safetensors \\
      --config.networks.inception.checkpoint=/weights/pt_inception-2015-12-05.pth \\
      --config.train.vae.checkpoint=/weights/sd-vae-ft-ema.safetensors \\
      --config.study.references.train=/data/VIRTUAL_imagenet256_labeled.npz

Cells are evaluated in Inception's space (the paper's) and DINOv2-B's, against ADM's
reference batch (drawn from the train split; `references.train`) and the validation split
(`references.test`). CAS trains a ResNet-50 from scratch (seed 0) on each cell's samples
and scores it on the validation split; it holds both sets in host memory (50,000 samples and
50,000 validation images at 256 px: ~20 GB).

Arguments (`:name=value,...`): model dit or sit (as configs/imagenet.py); smoke=True:
methods random and gadc, seeds 0 and 1, 10/class, no ablations, configs/imagenet.py's
toy sizes.
"""

import os
import runpy

import ml_collections

from gadc_jax import defaults

_IMAGENET = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet.py')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, model='dit', smoke=False)
  config = runpy.run_path(_IMAGENET)['get_config'](f'model={args.model},smoke={args.smoke}')
  config.job = 'study'
  config.evaluate.networks = ('inception', 'evaluation')
  config.networks.cas = ml_collections.ConfigDict({'arch': 'resnet50', 'seed': 0})
  config.study = defaults.study()
  config.study.methods = ('random', 'herding', 'kcenter', 'd2c', 'gadc')
  config.study.budgets = ('10/class', '50/class', '100/class')
  config.study.seeds = (0, 1, 2)
  config.study.references = ml_collections.ConfigDict(
      {'train': '', 'test': 'split:validation'})  # train: ADM's reference batch .npz.
  config.study.cas.network = 'cas'
  config.study.cas.split = 'validation'
  config.study.cas.steps = 20_000
  config.study.cas.batch_size = 256
  config.study.cas.learning_rate = 1e-3
  config.study.cas.weight_decay = 0.05
  if args.smoke:
    config.study.methods = ('random', 'gadc')
    config.study.budgets = ('10/class',)
    config.study.seeds = (0, 1)
    config.study.ablations = ml_collections.ConfigDict()
    config.study.cas.steps = 4
    config.study.cas.batch_size = 8
  return config
