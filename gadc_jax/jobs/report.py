"""The report job: rebuilds ROOT/report/ from a study's cells (never modifying them).

ROOT is config.report.root ('' = the workdir), holding study.json and cells/*/cell.json
(gadc_jax.study_cells). Writes

    report/report.md       the command, tables per budget, paired differences, rankings,
                           directions, links to the plots
    report/results.csv     one row per cell, every hparam, metric, diagnostic and time
    report/plots/*.png     metric-vs-budget, bars per budget, diagnostic-vs-FID, selections
    report/hparams/CELL/   TensorBoard HParams run of each cell (clu)

The whole folder is built beside report/ and then swapped in, so a rerun regenerates it
from the cells and a failed run leaves the previous report as it was.
"""

import os
import shutil
import tempfile

from absl import logging
import jax
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import layout
from gadc_jax import study_cells
from gadc_jax import study_plots
from gadc_jax import study_report
from gadc_jax import validation
from gadc_jax.data import input_pipeline


def _check_config(config: ml_collections.ConfigDict) -> None:
  cfg = config.report
  validation.require(cfg, 'config.report', positive_ints=('grid_classes', 'grid_per_class'))
  if not 0 < cfg.confidence < 1:
    raise ValueError(f'config.report.confidence must be in (0, 1), got {cfg.confidence!r}')


def _selection_rows(config, workdir: str, cell: dict) -> tuple[str, list[np.ndarray]]:
  """(split, positions of the first grid_per_class images of each of the first
  grid_classes classes) of the cell's selection."""
  folder = layout.resolve(workdir, cell['selection'])
  record = artifacts.read_json(os.path.join(folder, 'selection.json'))
  with np.load(os.path.join(folder, 'selection.npz')) as npz:
    offsets, positions = npz['offsets'], npz['positions']
  cfg = config.report
  rows = [positions[offsets[c]:offsets[c + 1]][:cfg.grid_per_class]
          for c in range(min(cfg.grid_classes, len(offsets) - 1))]
  return record['config']['split'], rows


def _selection_plots(config, workdir: str, study, plots_dir: str) -> list[tuple[str, str]]:
  """selections-BUDGET.png per budget: the lowest seed's selection of every method."""
  out = []
  for budget in study_cells.budgets(study.cells):
    shown = {}
    for group in study_cells.groups(study.cells):
      mine = sorted((c for c in study.cells if c['group'] == group and c['budget'] == budget
                     and c['family'] == 'method' and c['selection']), key=lambda c: c['seed'])
      if mine:
        shown[group] = (mine[0]['seed'], *_selection_rows(config, workdir, mine[0]))
    if not shown:
      continue
    rows_by_group = {}
    for group, (seed, split, rows) in shown.items():
      images = input_pipeline.read_examples(config.data, split, np.concatenate(rows))['image']
      rows_by_group[f'{group} (seed {seed})'] = np.split(
          images, np.cumsum([len(r) for r in rows])[:-1])
    name = f'selections-{study_plots.slug(budget)}.png'
    study_plots.selections_side_by_side(
        rows_by_group, f'selections at budget {budget}, a row per class',
        os.path.join(plots_dir, name))
    out.append((f'selections at budget {budget}', f'plots/{name}'))
  return out


def _plots(config, workdir: str, study, metrics, plots_dir: str) -> list[tuple[str, str]]:
  cfg = config.report
  out = []
  for metric in metrics:
    name = f'budget-{study_plots.slug(metric)}.png'
    study_plots.metric_against_budget(study, metric, cfg.confidence,
                                      os.path.join(plots_dir, name))
    out.append((f'{metric} against budget', f'plots/{name}'))
    for budget in study_cells.budgets(study.cells):
      name = f'bars-{study_plots.slug(metric)}-{study_plots.slug(budget)}.png'
      study_plots.bars_at_budget(study, metric, budget, cfg.confidence,
                                 os.path.join(plots_dir, name))
      out.append((f'{metric} at budget {budget}', f'plots/{name}'))
  if cfg.fid_metric in study_cells.metric_names(study.cells):
    for diagnostic in study_cells.metric_names(study.cells, 'diagnostics'):
      name = f'diagnostic-{study_plots.slug(diagnostic)}.png'
      study_plots.diagnostic_against_fid(study.cells, diagnostic, cfg.fid_metric,
                                         os.path.join(plots_dir, name))
      out.append((f'{diagnostic} against {cfg.fid_metric}', f'plots/{name}'))
  else:
    logging.info('report: no cell has %s (config.report.fid_metric); no diagnostic plots',
                 cfg.fid_metric)
  return out + _selection_plots(config, workdir, study, plots_dir)


def _build(config, workdir: str, study, folder: str) -> list[tuple[str, str]]:
  cfg = config.report
  found = study_cells.metric_names(study.cells)
  metrics = list(cfg.metrics) or found
  unknown = [m for m in metrics if m not in found]
  if unknown:
    raise ValueError(f'config.report.metrics names {", ".join(unknown)}, which no cell of '
                     f'{study.root}/cells has; the cells have {", ".join(found)}')
  plots = _plots(config, workdir, study, metrics, os.path.join(folder, 'plots'))
  study_report.write_text(os.path.join(folder, 'report.md'),
                          study_report.markdown(study, metrics, cfg.confidence, plots))
  study_report.write_text(os.path.join(folder, 'results.csv'),
                          study_report.results_csv(study.cells))
  study_report.write_hparams(study.cells, os.path.join(folder, 'hparams'))
  return plots


def _swap_in(built: str, final: str) -> None:
  """Replaces the folder `final` by `built` (two renames; the old one is removed after)."""
  old = None
  if os.path.exists(final):
    old = tempfile.mkdtemp(dir=os.path.dirname(final), prefix='.tmp-report-old-')
    os.replace(final, os.path.join(old, 'report'))
  os.replace(built, final)
  if old is not None:
    shutil.rmtree(old)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  _check_config(config)
  root = layout.resolve(workdir, config.report.root) if config.report.root else workdir
  study = study_cells.load_study(root)
  if jax.process_index() != 0:  # one host writes the report.
    return None
  final = os.path.join(root, 'report')
  # Not mkdtemp: its folder is private (0700) whatever the umask, and a team shares reports.
  built = os.path.join(root, f'.tmp-report-{os.getpid()}')
  shutil.rmtree(built, ignore_errors=True)  # a killed earlier try of this process id.
  os.makedirs(built)
  try:
    plots = _build(config, workdir, study, built)
    _swap_in(built, final)
  finally:
    if os.path.exists(built):
      shutil.rmtree(built)
  logging.info('report of %d cells written to %s', len(study.cells), final)
  if study.missing:
    logging.warning('report %s: %d cells of study.json have no cell.json yet: %s', final,
                    len(study.missing), ', '.join(study.missing))
  return {'report': os.path.join(final, 'report.md'), 'cells': len(study.cells),
          'plots': [os.path.join(final, path) for _, path in plots]}
