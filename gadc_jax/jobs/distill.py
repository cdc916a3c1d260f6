"""The distill job: the paper's ablation rows and real-image baselines, one cell per
(row, IPC, seed), then the results table.

Stages: the teachers, the surrogate and the selection networks (train_classifier), the
generator (train: config.train on the whole split, unless config.train.weights names a
published one), features for the baselines' selections;
then for each IPC and seed the image sets (distill_sample with OT guidance off, 'igd', and
on, 'igd+otg'; the select job for each baseline method at IPC images per class) and, per row,
train_students on the row's image set with the row's labelling. Each cell lands in
WORKDIR/distill/cells/CELL/cell.json (the shared cell format; metrics top1_<student>), and
WORKDIR/distill/study.json lists them; the report job (config.report) rebuilds
WORKDIR/distill/report/ from them, and the job prints the table of mean ± std over seeds.
Every stage skips finished work, so a rerun redoes only what is missing.
"""

import os
import sys

import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax.distill import soft_labels
from gadc_jax.distill import students

# Row -> (image set: a distilled set's guidance tag or a selection method, labels, changes to
# config.train_students). The ablation's rows are the paper's (ImageNette table).
ROWS = {
    'igd': ('igd', 'hard', {}),
    'igd+otg': ('igd+otg', 'hard', {}),
    'no_otg': ('igd', 'soft', {}),
    'no_lia': ('igd+otg', 'soft', {'lia.fixed_teachers': 1}),
    'no_otm': ('igd+otg', 'soft', {'otm.beta2': 0.0}),
    'full': ('igd+otg', 'soft', {}),
}
BASELINES = ('random', 'herding', 'gadc')
GUIDANCE = ('igd', 'igd+otg')


def _check_config(config: ml_collections.ConfigDict) -> None:
  cfg = config.distill
  if not cfg.ipcs or not cfg.seeds:
    raise ValueError('config.distill.ipcs and config.distill.seeds must name at least one')
  for key in ('ipcs', 'seeds'):
    for value in cfg[key]:
      if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == 'ipcs'
                                                                           else 0):
        raise ValueError(f'config.distill.{key} must hold integers >= '
                         f'{1 if key == "ipcs" else 0}, got {value!r}')
  for row in cfg.rows:
    if row not in ROWS and row not in BASELINES:
      raise ValueError(f'config.distill.rows: unknown row {row!r}; known: '
                       f'{", ".join(list(ROWS) + list(BASELINES))}')
  students_cfg = config.copy_and_resolve_references()
  students_cfg.train_students.images = 'distilled:each-cell-sets-its-own'
  students.check_config(students_cfg)
  lia = config.train_students.lia
  for ipc in cfg.ipcs:  # a pool too small for an IPC fails now, not after the generator.
    soft_labels.choose_teachers(lia.pool, lia.teachers_per_ipc, ipc, lia.fixed_teachers,
                                'config.train_students.lia')
  if 'report' not in config:
    raise ValueError('config.report is missing: the distill job ends with the report job '
                     '(defaults.report())')
  if any(ROWS.get(r, ('',))[0] in GUIDANCE for r in cfg.rows):
    if 'distill_sample' not in config:
      raise ValueError('config.distill.rows need distilled images, but the config has no '
                       'distill_sample section (defaults.distill_sample())')
    for ipc in cfg.ipcs:  # the sampler refuses it too, but only after the generator trained.
      if ipc > config.distill_sample.max_ipc:
        raise ValueError(f'config.distill.ipcs: IPC {ipc} exceeds the sampler\'s batch limit '
                         f'config.distill_sample.max_ipc {config.distill_sample.max_ipc}')


def _sample_config(config, tag: str, ipc: int, seed: int) -> ml_collections.ConfigDict:
  """config for distill_sample of `tag` ('igd': OT guidance off; 'igd+otg': on)."""
  cfg = config.copy_and_resolve_references()
  cfg.distill_sample.ipc, cfg.distill_sample.seed = ipc, seed
  cfg.distill_sample.name = f'{tag}-ipc{ipc}-seed{seed}'
  if tag == 'igd':
    cfg.distill_sample.scales.ot = 0.0
  return cfg


def _select_config(config, method: str, ipc: int, seed: int) -> ml_collections.ConfigDict:
  cfg = config.copy_and_resolve_references()
  cfg.select.method, cfg.select.budget, cfg.select.seed = method, f'{ipc}/class', seed
  cfg.select.name = ''
  return cfg


def _students_config(config, row: str, images: str, ipc: int, seed: int):
  _, labels, changes = ROWS.get(row, (row, 'soft', {}))
  cfg = config.copy_and_resolve_references()
  ts = cfg.train_students
  ts.images, ts.labels, ts.seed = images, labels, seed
  ts.name = f'{row}-ipc{ipc}-seed{seed}'
  for key, value in changes.items():
    section, field = key.split('.')
    ts[section][field] = value
  return cfg


def _seconds(path: str) -> float:
  return float(artifacts.read_json(path).get('seconds', 0.0)) if os.path.exists(path) else 0.0


def _flat(prefix: str, section) -> dict:
  return {f'{prefix}.{k}': v for k, v in section.items()
          if isinstance(v, (int, float, str, bool))}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  _check_config(config)
  cfg = config.distill
  jobs.run('train_classifier', config, workdir)
  rows = list(cfg.rows)
  if any(r in ROWS for r in rows) and not config.train.weights:  # else a published one.
    jobs.run('train', config, workdir)
  if any(r in BASELINES for r in rows):
    jobs.run('features', config, workdir)
  root = layout.distill_dir(workdir)
  cells = []
  for ipc in cfg.ipcs:
    for seed in cfg.seeds:
      sources, prep_seconds = {}, {}
      for tag in dict.fromkeys(ROWS[r][0] for r in rows if r in ROWS):
        sample_cfg = _sample_config(config, tag, ipc, seed)
        jobs.run('distill_sample', sample_cfg, workdir)
        name = sample_cfg.distill_sample.name
        sources[tag] = (f'distilled:{name}', '')
        prep_seconds[tag] = {'sample': _seconds(
            os.path.join(layout.distilled_dir(workdir, name), 'distilled.json'))}
      for method in (r for r in rows if r in BASELINES):
        select_cfg = _select_config(config, method, ipc, seed)
        jobs.run('select', select_cfg, workdir)
        name = layout.selection_name(select_cfg.select)
        sources[method] = (f'selection:{name}', os.path.join('selections', name))
        prep_seconds[method] = {'select': _seconds(
            os.path.join(layout.selection_dir(workdir, name), 'selection.json'))}
      for row in rows:
        source = ROWS[row][0] if row in ROWS else row
        images, selection = sources[source]
        students_cfg = _students_config(config, row, images, ipc, seed)
        record = jobs.run('train_students', students_cfg, workdir)
        cells.append(_write_cell(root, students_cfg, row, ipc, seed, record, selection,
                                 prep_seconds[source]))
  study = {'command': ' '.join(sys.argv), 'config': config.to_dict(), 'cells': cells,
           'baseline_group': 'igd' if 'igd' in rows else rows[0], 'lower_is_better': []}
  artifacts.atomic_write_json(os.path.join(root, 'study.json'), study)
  report_config = config.copy_and_resolve_references()
  report_config.report.root = os.path.relpath(root, workdir)
  jobs.run('report', report_config, workdir)
  print(table(root, cells))


def _write_cell(root: str, config, row: str, ipc: int, seed: int, record: dict,
                selection: str, seconds: dict) -> str:
  ts = config.train_students
  name = ts.name
  hparams = {'distill.row': row, 'distill.images': ts.images, 'train_students.labels':
             ts.labels, 'train_students.steps': ts.steps, 'lia.teachers': len(record['teachers'])}
  if ts.labels == 'soft':
    hparams.update(_flat('otm', ts.otm))
    hparams.update(_flat('lia', ts.lia))
  seconds = dict(seconds, students=record['seconds'])
  seconds['total'] = sum(seconds.values())
  cell = {
      'cell': name, 'group': row, 'family': 'method' if row in BASELINES else 'ablation',
      'budget': f'ipc{ipc}', 'budget_value': ipc, 'seed': seed, 'hparams': hparams,
      'metrics': {f'top1_{s}': acc for s, acc in record['top1'].items()},
      'diagnostics': {}, 'seconds': seconds, 'selection': selection,
      'images': ts.images, 'fingerprint': record['fingerprint'],
  }
  artifacts.atomic_write_json(os.path.join(root, 'cells', name.replace('/', 'per'),
                                           'cell.json'), cell)
  return name


def table(root: str, cells) -> str:
  """Top-1 (%) per row and IPC: mean ± sample std over seeds (n), one column per student."""
  results = {}
  for name in cells:
    cell = artifacts.read_json(os.path.join(root, 'cells', name.replace('/', 'per'),
                                            'cell.json'))
    for metric, value in cell['metrics'].items():
      results.setdefault((cell['group'], cell['budget'], metric), []).append(value)
  metrics = sorted({m for _, _, m in results})
  lines = [f'== distill: top-1 on the real test split (%), mean ± std over seeds  {root}',
           '| row | IPC | ' + ' | '.join(m.removeprefix('top1_') for m in metrics) + ' |',
           '|---|---|' + '---|' * len(metrics)]
  for group, budget in dict.fromkeys((g, b) for g, b, _ in results):
    values = []
    for metric in metrics:
      v = np.asarray(results.get((group, budget, metric), []), float) * 100
      values.append(f'{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f} (n={len(v)})'
                    if len(v) else '-')
    lines.append(f'| {group} | {budget} | ' + ' | '.join(values) + ' |')
  return '\n'.join(lines)
