"""The paper's ImageNet-1K distillation setup (`distill` job): DiT-XL/2 on SD-VAE latents,
IPC 10 and 50, ResNet-18 teachers and students, 3 seeds.

    python main.py --config=configs/imagenet_distill.py --workdir=gs://BUCKET/distill \\
      --config.data.manual_dir=/data/imagenet \\
      --config.networks.teacher_a.checkpoint=/weights/resnet18-f37072fd.pth \\
      --config.networks.teacher_b.checkpoint=/weights/resnet34-b627a593.pth \\
      --config.networks.teacher_c.checkpoint=/weights/resnet50-0676ba61.pth \\
      --config.networks.teacher_d.checkpoint=/weights/resnet50-11ad3fa6.pth \\
      --config.networks.selection.checkpoint=/weights/inception_v3_google.pth \\
      --config.train.vae.checkpoint=/weights/sd-vae-ft-ema.safetensors \\
      --config.train.weights=/weights/DiT-XL-2-256x256.pt

The generator is the published DiT-XL/2 (config.train.weights: the DiT release's file,
converted on load; reading a .pt needs torch installed); without that flag the job trains
DiT-XL/2 on the whole train split first.

Teachers are torchvision's published ImageNet weights (converted on load, local files); the
surrogate of IGD's influence term is teacher_a. Students are ResNet-18s trained from scratch
(AdamW, cosine schedule, RDED / IGD's protocol: 300 epochs of the distilled set) with
random-resized crops and flips, their BatchNorm in train mode. They train at the data's
256 px (the student step does not resize to a network's input_size).
"""

import ml_collections

from gadc_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, smoke=False)
  config = ml_collections.ConfigDict()
  config.job = 'distill'
  config.data = defaults.data()
  config.data.name = 'imagenet2012'
  config.data.image_size = 256

  resnet = lambda arch: {'arch': arch, 'checkpoint': '', 'input_size': 224}  # pylint: disable=g-long-lambda
  config.networks = ml_collections.ConfigDict({
      'teacher_a': resnet('resnet18'),
      'teacher_b': resnet('resnet34'),
      'teacher_c': resnet('resnet50'),
      'teacher_d': resnet('resnet50'),
      'selection': {'arch': 'inception_v3', 'checkpoint': '', 'input_size': 299},
      'student_resnet18': {'arch': 'resnet18', 'seed': 0},
  })
  config.classifier = defaults.classifier()
  config.classifier.networks = ()  # every teacher is converted, none trained here.

  config.features = defaults.features()
  config.features.networks = ('selection',)
  config.features.shard_size = 10_000
  config.select = defaults.select()
  config.select.network = 'selection'
  config.select.eval_networks = ()
  config.select.gadc = defaults.gadc('inception_v3')

  config.train = defaults.train()
  config.train.selection = ''
  config.train.model = 'DiT-XL/2'
  config.train.space = 'latent'
  config.train.steps = 400_000
  config.train.batch_size = 256
  config.train.flip = True
  config.train.checkpoint_every = 10_000
  config.train.sampler.guided_channels = 3

  config.distill_sample = defaults.distill_sample()
  config.distill_sample.max_ipc = 50
  config.distill_sample.class_batch = 50
  config.distill_sample.surrogate.networks = ('teacher_a',)

  config.train_students = defaults.train_students()
  config.train_students.students = ('student_resnet18',)
  config.train_students.lia.pool = ('teacher_a', 'teacher_b', 'teacher_c', 'teacher_d')
  config.train_students.eval_split = 'validation'
  config.train_students.steps = 300 * 10_000 // 128  # 300 epochs of the IPC 10 set.
  config.train_students.batch_size = 128
  config.train_students.learning_rate = 1e-3
  config.train_students.warmup_steps = 500
  # RDED / IGD's protocol: RandomResizedCrop (torchvision's defaults) and horizontal flips.
  config.train_students.augment = ml_collections.ConfigDict({
      'shift': 0, 'flip': True, 'resized_crop_scale': (0.08, 1.0),
      'resized_crop_ratio': (3 / 4, 4 / 3)})

  config.distill = defaults.distill()
  config.report = defaults.report()  # the distill job's table and plots (report.root: set by the job)
  config.distill.ipcs = (10, 50)
  if args.smoke:
    config.train.model = 'DiT-S/2'
    config.train.model_overrides = ml_collections.ConfigDict(
        {'depth': 1, 'hidden': 64, 'heads': 2})
    config.train.steps = 4
    config.train.batch_size = 8
    config.train.log_every = config.train.checkpoint_every = 2
    config.distill_sample.sampler.steps = 4
    config.distill_sample.window = (1, 3)
    config.train_students.steps = 2
    config.distill.ipcs = (1,)
    config.distill.seeds = (0,)
  return config
