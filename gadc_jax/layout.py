"""Where each artifact lives under the workdir, as pure functions of the config.

    WORKDIR/classifiers/NETWORK/            train_classifier
    WORKDIR/features/NETWORK-SPLIT/         features
    WORKDIR/difficulty/RUN-SPLIT/           difficulty (D2C's scores by the train run RUN)
    WORKDIR/selections/SELECTION/           select
    WORKDIR/selections/SELECTION/repa-NET/  repa_targets (REPA targets of a selection)
    WORKDIR/repa/NET-SPLIT/                 repa_targets (of a whole split)
    WORKDIR/text_embeddings/NAME/           text_embeddings
    WORKDIR/train/RUN/                      train
    WORKDIR/samples/RUN/                    sample
    WORKDIR/eval/RUN.json, eval/RUN/        evaluate
    WORKDIR/eval_cache/                     evaluate (reference embeddings)
    WORKDIR/exports/NAME/                   export (a selection or a cell's, as image files)
    WORKDIR/distilled/NAME/                 distill_sample (a distilled image set)
    WORKDIR/students/NAME/                  train_students
    WORKDIR/distill/                        distill (cells, study.json, report)

A job finds the artifacts of the jobs before it through these names, never through another
job's module.
"""

import os


def classifier_dir(workdir: str, network: str) -> str:
  return os.path.join(workdir, 'classifiers', network)


def features_dir(workdir: str, network: str, split: str) -> str:
  return os.path.join(workdir, 'features', f'{network}-{split}')


def difficulty_dir(workdir: str, run: str, split: str) -> str:
  return os.path.join(workdir, 'difficulty', f'{run}-{split}')


def selection_name(select_cfg) -> str:
  """config.select's folder name: METHOD-BUDGET-seedSEED unless select.name is set."""
  budget = str(select_cfg.budget).replace('/', 'per')
  return select_cfg.name or f'{select_cfg.method}-{budget}-seed{select_cfg.seed}'


def selection_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'selections', name)


def trained_selection(config) -> str:
  """The selection folder config.train trains on ('' for the whole split)."""
  if config.train.selection == '@select':
    return selection_name(config.select)
  return config.train.selection


def repa_targets_dir(workdir: str, config) -> str:
  """Where the REPA targets of the images config.train trains on live: beside their
  selection, or (training on a whole split) under WORKDIR/repa."""
  network, selection = config.train.repa.features, trained_selection(config)
  if selection:
    return os.path.join(selection_dir(workdir, selection), f'repa-{network}')
  return os.path.join(workdir, 'repa', f'{network}-{config.train.split}')


def text_embeddings_dir(workdir: str, cfg) -> str:
  """config.text_embeddings' folder: its name, or its checkpoint folder's name."""
  name = cfg.name or os.path.basename(os.path.normpath(cfg.checkpoint))
  return os.path.join(workdir, 'text_embeddings', name)


def text_embeddings_file(workdir: str, cfg) -> str:
  """The .npz the text_embeddings job writes: tokens [C, L, W] float32, mask [C, L]."""
  return os.path.join(text_embeddings_dir(workdir, cfg), 'text_embeddings.npz')


def train_name(config) -> str:
  cfg = config.train
  return cfg.name or f'{cfg.model.replace("/", "_")}-{trained_selection(config) or cfg.split}'


def train_dir(workdir: str, config) -> str:
  return os.path.join(workdir, 'train', train_name(config))


def samples_name(config) -> str:
  return config.sample.name or train_name(config)


def samples_dir(workdir: str, config) -> str:
  return os.path.join(workdir, 'samples', samples_name(config))


def samples_file(workdir: str, config) -> str:
  """The samples .npz the sample job of `config` writes."""
  return os.path.join(samples_dir(workdir, config), 'samples.npz')


def eval_name(config) -> str:
  return config.evaluate.out_name or samples_name(config)


def eval_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'eval', f'{name}.json')


def eval_cache_dir(workdir: str) -> str:
  return os.path.join(workdir, 'eval_cache')


def export_dir(workdir: str, name: str) -> str:
  """The export of selection or cell `name` ('/' written 'per', as in cell folders)."""
  return os.path.join(workdir, 'exports', name.replace('/', 'per'))


def guidance_tag(scales) -> str:
  """'plain', 'igd', 'igd+otg' or 'otg': which guidance terms config.distill_sample.scales
  turns on (IGD's influence or deviation; the OT term)."""
  terms = [tag for tag, on in (('igd', scales.influence > 0 or scales.deviation > 0),
                               ('otg', scales.ot > 0)) if on]
  return '+'.join(terms) or 'plain'


def distilled_name(cfg) -> str:
  """config.distill_sample's folder name: GUIDANCE-ipcIPC-seedSEED unless its name is set."""
  return cfg.name or f'{guidance_tag(cfg.scales)}-ipc{cfg.ipc}-seed{cfg.seed}'


def distilled_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'distilled', name)


def distilled_file(workdir: str, name: str) -> str:
  """The distilled set: images uint8 [C*IPC, H, W, C], labels int32 [C*IPC], class-major."""
  return os.path.join(distilled_dir(workdir, name), 'images.npz')


def resolve(workdir: str, path: str) -> str:
  """A user-given path: absolute as is, relative ones under the workdir."""
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def students_dir(workdir: str, name: str) -> str:
  """Students trained by the train_students job on one image set with one labelling."""
  return os.path.join(workdir, 'students', name)


def distill_dir(workdir: str) -> str:
  """The distill job's cells, study.json and report."""
  return os.path.join(workdir, 'distill')
