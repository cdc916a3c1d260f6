"""The export job: a selection as an image folder, a CSV and a TFDS-readable split.

config.export.selection names a folder of WORKDIR/selections or a cell of WORKDIR/cells; the
export goes to config.export.dir ('' = WORKDIR/exports/NAME), laid out as
gadc_jax.selection_export describes. A finished export of the same inputs is skipped; an
export folder made from other inputs (another selection, mode or image size) is refused with
a ValueError naming its export.json, and a non-empty folder that is no export is never
written into.
"""

import os

from absl import logging
import jax
import ml_collections
import tqdm

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import selection_export
from gadc_jax.data import input_pipeline

_BATCH = 512  # images read per call of the input pipeline.
_STARTED = '.export-started.json'


def _check_config(config: ml_collections.ConfigDict) -> None:
  cfg = config.export
  if cfg.mode not in selection_export.MODES:
    raise ValueError(f'config.export.mode must be one of {", ".join(selection_export.MODES)}, '
                     f'got {cfg.mode!r}')
  if not cfg.selection:
    raise ValueError('config.export.selection is empty: name a folder of WORKDIR/selections '
                     'or a cell of WORKDIR/cells')


def _link_sources(config, selected, mode: str):
  """The original file of each image when the export links to them, else None."""
  if mode != 'links':
    return None
  if config.data.name != input_pipeline.FOLDER:
    logging.info('export: %s is no image folder, so there are no files to link to; '
                 'writing PNG files', config.data.name)
    return None
  root = os.path.expanduser(config.data.folder)
  return [os.path.join(root, str(i))
          if os.path.splitext(str(i))[1].lower() in selection_export.TFDS_IMAGE_EXTENSIONS
          else None for i in selected.ids]


def _check_folder(out: str) -> None:
  """A non-empty folder without this job's records is someone else's: never write there."""
  if os.path.isdir(out) and os.listdir(out) and not any(
      os.path.exists(os.path.join(out, name)) for name in ('export.json', _STARTED)):
    raise ValueError(f'export folder {out} exists and holds files that no export wrote; '
                     'choose another config.export.dir')


def _write_images(config, selected, split: str, out: str, paths, sources) -> None:
  todo = [i for i in range(len(paths)) if sources is None or sources[i] is None]
  if sources is not None:
    for path, source in zip(paths, sources):
      if source is not None:
        selection_export.write_link(os.path.join(out, path), source)
  for start in tqdm.tqdm(range(0, len(todo), _BATCH), desc=f'export {out}', unit='batch'):
    batch = todo[start:start + _BATCH]
    images = input_pipeline.read_examples(config.data, split,
                                          selected.positions[batch])['image']
    for i, image in zip(batch, images):
      selection_export.write_png(os.path.join(out, paths[i]), image)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  _check_config(config)
  cfg = config.export
  folder = selection_export.find_selection(workdir, cfg.selection)
  selected = selection_export.load_selection(folder)
  split = selected.record['config']['split']
  info = input_pipeline.split_info(config.data, split)
  if selected.record['inputs']['dataset'] != [info.dataset, info.version, info.split]:
    raise ValueError(f'{folder} selects from {selected.record["inputs"]["dataset"]}, not from '
                     f'config.data {[info.dataset, info.version, info.split]}')
  out = layout.resolve(workdir, cfg.dir) if cfg.dir else layout.export_dir(workdir, cfg.selection)
  sources = _link_sources(config, selected, cfg.mode)
  paths = selection_export.relative_paths(selected.ids, selected.labels, info.class_names,
                                          sources)
  inputs = {
      'selection': folder,
      'selection_fingerprint': selected.record['fingerprint'],
      'selection_npz': selected.record['artifacts']['selection.npz']['sha256'],
      'dataset': [info.dataset, info.version, info.split],
      'image_size': config.data.image_size,
      'mode': 'files' if sources is None else 'links',
  }
  expected = artifacts.fingerprint(inputs)
  if jax.process_index() != 0:  # one host writes the export.
    return None
  _check_folder(out)
  done = os.path.join(out, 'export.json')
  record = artifacts.finished_or_start(done, os.path.join(out, _STARTED), expected, inputs,
                                       'export')
  if record is not None:
    artifacts.verify_files(out, record['artifacts'], f'export {out}', checksums=False)
    logging.info('export %s already complete; skipping.', out)
    return record
  _write_images(config, selected, split, out, paths, sources)
  csv_text = selection_export.selection_csv(selected.ids, selected.labels, info.class_names,
                                            paths)
  with artifacts.atomic_path(os.path.join(out, 'selection.csv')) as tmp:
    with open(tmp, 'w') as f:
      f.write(csv_text)
  record = {'fingerprint': expected, 'inputs': inputs, 'num_images': len(paths),
            'class_names': list(info.class_names),
            'artifacts': artifacts.describe_files(out, ['selection.csv', *paths])}
  artifacts.atomic_write_json(done, record)
  logging.info('export of %d images written to %s', len(paths), out)
  return record
