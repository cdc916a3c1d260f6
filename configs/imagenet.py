"""The paper's ImageNet setups (shared SPEC_TRAINING): select, train DiT-L/2 or SiT-L/2 on
SD-VAE latents of the subset, sample 50,000 images and score them against ADM's reference.

    python main.py --config=configs/imagenet.py:model=dit,budget=10/class \\
      --workdir=gs://BUCKET/run \\
      --config.data.manual_dir=/data/imagenet \\
      --config.networks.selection.checkpoint=/weights/inception_v3_google.pth \\
      --config.networks.evaluation.checkpoint=/weights/dinov2-base.safetensors \\
      --config.networks.inception.checkpoint=/weights/pt_inception-2015-12-05.pth \\
      --config.train.vae.checkpoint=/weights/sd-vae-ft-ema.safetensors \\
      --config.evaluate.reference=/data/VIRTUAL_imagenet256_labeled.npz

Arguments (`:name=value,...`):
  model   dit (DiT-L/2, 250 DDPM steps, CFG 1.5) or sit (SiT-L/2, 250-step Euler ODE).
  budget  10/class, 50/class or 100/class (10K, 50K, 100K images), or any select.budget.
  smoke   True: the same stages at toy sizes (a DiT-S/2 of depth 1, a few steps and
          samples), to check a setup end to end before a long run.

D2C's Attach (SPEC_TRAINING) adds two stages before train, each with local weights:

    --config.stages="('features','select','text_embeddings','repa_targets','train',
                      'sample','evaluate')" \\
      --config.text_embeddings.checkpoint=/weights/flan-t5-xl \\
      --config.text_embeddings.class_names=/data/imagenet/LOC_synset_mapping.txt \\
      --config.networks.dinov2.checkpoint=/weights/dinov2-base/model.safetensors \\
      --config.train.repa.features=dinov2 --config.train.model_overrides.repa_depth=8 \\
      --config.train.text_embeddings=WORKDIR/text_embeddings/flan-t5-xl/text_embeddings.npz

The class names come from ImageNet's LOC_synset_mapping.txt (ILSVRC localisation data;
lines 'n01440764 tench, Tinca tinca', keyed by TFDS's WordNet-id labels), read by the
text_embeddings job, which writes WORKDIR/text_embeddings/NAME/text_embeddings.npz
(WORKDIR: the --workdir). The REPA targets are DINOv2-B patch tokens of the selected images
at 224 px (16 x 16), stored float16 beside the selection by the repa_targets job.

Weights are local files of the published checkpoints; nothing is downloaded. Selection uses
the release's default encoder, torchvision's Inception-v3, with its preset (epsilon 12,
w_ce 1200). Every selection is also judged outside its own space: its geometry diagnostics
are computed in DINOv2-B's pooled features as well (the `evaluation` network, the weights of
transformers' Dinov2Model facebook/dinov2-base; at 224x224, no classifier head).
With `--config.select.method=d2c` the difficulty stage first trains D2C's scorer
(a DiT on the whole split's latents) and scores every image with it.
"""

import ml_collections

from gadc_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, model='dit', budget='10/class', smoke=False)
  if args.model not in ('dit', 'sit'):
    raise ValueError(f"configs/imagenet.py: model must be 'dit' or 'sit', not {args.model!r}")
  dit = args.model == 'dit'
  config = ml_collections.ConfigDict()
  config.job = 'pipeline'
  config.stages = ('features', 'difficulty', 'select', 'train', 'sample', 'evaluate')

  config.data = defaults.data()
  config.data.name = 'imagenet2012'
  config.data.image_size = 256

  # Published weights, converted on load; set the checkpoint paths on the command line.
  config.networks = ml_collections.ConfigDict({
      'selection': {'arch': 'inception_v3', 'checkpoint': '', 'input_size': 299},
      'evaluation': {'arch': 'dinov2_b14', 'checkpoint': '', 'input_size': 224},
      'inception': {'arch': 'inception_v3_fid', 'checkpoint': '', 'input_size': 299,
                    'with_spatial': True},
      # REPA's target encoder (used when config.train.repa.features names it).
      'dinov2': {'arch': 'dinov2_b14', 'checkpoint': '', 'input_size': 224,
                 'with_patch_tokens': True},
  })
  config.classifier = defaults.classifier()
  config.classifier.networks = ()

  config.features = defaults.features()
  config.features.networks = ('selection', 'evaluation')
  config.features.shard_size = 10_000

  config.select = defaults.select()
  config.select.method = 'gadc'
  config.select.budget = args.budget
  config.select.eval_networks = ('evaluation',)
  config.select.gadc = defaults.gadc('inception_v3')

  # TFDS labels ImageNet by WordNet id (n01440764); the text is the synset mapping's words.
  config.text_embeddings = defaults.text_embeddings()
  config.text_embeddings.class_names = 'LOC_synset_mapping.txt'  # give its path.
  config.repa_targets = defaults.repa_targets()

  config.train = defaults.train()
  config.train.selection = '@select'
  config.train.model = 'DiT-L/2' if dit else 'SiT-L/2'
  config.train.space = 'latent'
  config.train.steps = 100_000
  config.train.batch_size = 128
  config.train.learning_rate = 1e-4
  config.train.ema_decay = 0.9999
  config.train.flip = True
  config.train.checkpoint_every = 5_000
  config.train.sample_every = 10_000
  config.train.sampler.method = 'ddpm' if dit else 'ode'
  # Guidance on the first 3 of the 4 latent channels, as DiT's and SiT's forward_with_cfg.
  config.train.sampler.guided_channels = 3

  config.sample = defaults.sample()
  config.sample.num_samples = 50_000
  config.sample.batch_size = 250
  config.sample.sampler = config.train.sampler.copy_and_resolve_references()
  config.sample.sampler.steps = 250
  config.sample.sampler.cfg_scale = 1.5 if dit else 1.0

  config.evaluate = defaults.evaluate()
  config.evaluate.networks = ('inception',)
  config.evaluate.reference = ''  # the ADM reference batch .npz (VIRTUAL_imagenet256).
  config.evaluate.metrics = ('fid', 'sfid', 'is', 'precision', 'recall', 'kid')

  # The report job (a study's tables and plots) and the export job (a selection as files).
  config.report = defaults.report()
  config.export = defaults.export()

  if args.smoke:
    config.train.model = 'DiT-S/2' if dit else 'SiT-S/2'
    config.train.model_overrides = ml_collections.ConfigDict(
        {'depth': 1, 'hidden': 64, 'heads': 2})
    config.train.steps = 4
    config.train.batch_size = 8
    config.train.log_every = config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.train.grid_per_class = 1
    config.train.sampler.steps = 4
    config.sample.num_samples = 16
    config.sample.batch_size = 8
    config.sample.sampler.steps = 4

  # D2C's scorer (its stage runs for select.method=d2c only): the DiT of the train section
  # (a DiT-L/2 also for model=sit: the score is an epsilon loss), on the whole split.
  config.difficulty = defaults.difficulty()
  config.difficulty.shard_size = 10_000
  config.difficulty.scorer = config.train.copy_and_resolve_references()
  config.difficulty.scorer.selection = ''
  config.difficulty.scorer.model = config.train.model.replace('SiT', 'DiT')
  config.difficulty.scorer.sampler.method = 'ddpm'
  return config
