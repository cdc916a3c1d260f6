"""The study's report as text: report.md, results.csv and the TensorBoard HParams runs.

Every number in report.md is a statistic of the cells (gadc_jax.study_stats) written with
`number` (4 significant digits), so a reader can recompute it from the cells' JSON:

    mean ± half-width           per group and budget, t interval over seeds
    mean (1 seed)               one seed: no interval
    diff ± half-width (p=P)     group - baseline, matched by seed; P of the paired t test
"""

import csv
import io
import math
import os
from typing import Iterable, Sequence

from clu import metric_writers

from gadc_jax import artifacts
from gadc_jax import study_cells
from gadc_jax import study_stats

MISSING = '—'
_CELL_COLUMNS = ('cell', 'group', 'family', 'budget', 'budget_value', 'seed', 'selection')
_PREFIXED = ('hparams', 'metrics', 'diagnostics', 'seconds')


def number(x: float) -> str:
  """x with 4 significant digits ('nan' for NaN): the one format of every number shown."""
  return f'{x:.4g}'


def interval_text(interval: study_stats.Interval) -> str:
  if not interval.has_interval:
    return f'{number(interval.mean)} (1 seed)'
  return f'{number(interval.mean)} ± {number(interval.half_width)}'


def direction(lower_is_better: bool) -> str:
  return 'lower is better' if lower_is_better else 'higher is better'


def group_intervals(cells: list[dict], budget: str, metric: str,
                    confidence: float) -> dict[str, study_stats.Interval]:
  """{group: Interval of `metric` over its seeds} for the groups that have it at `budget`."""
  out = {}
  for group in study_cells.groups(cells):
    values = study_cells.values_by_seed(cells, group, budget, 'metrics', metric)
    if values:
      out[group] = study_stats.mean_interval(list(values.values()), confidence)
  return out


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return lines + ['']


def _means_table(study: study_cells.Study, budget: str, metrics: Sequence[str],
                 confidence: float) -> list[str]:
  cells = [c for c in study.cells if c['budget'] == budget]
  per_metric = {m: group_intervals(cells, budget, m, confidence) for m in metrics}
  rows = []
  for group in study_cells.groups(cells):
    mine = [c for c in cells if c['group'] == group]
    rows.append([group, mine[0]['family'], str(len(mine))] + [
        interval_text(per_metric[m][group]) if group in per_metric[m] else MISSING
        for m in metrics])
  return _table(['group', 'family', 'seeds', *metrics], rows)


def _differences_table(study: study_cells.Study, budget: str, metrics: Sequence[str],
                       confidence: float) -> list[str]:
  baseline = study.baseline_group
  cells = [c for c in study.cells if c['budget'] == budget]
  rows = []
  for group in study_cells.groups(cells):
    if group == baseline:
      continue
    row, seeds = [group], set()
    for m in metrics:
      paired = study_stats.paired_difference(
          study_cells.values_by_seed(cells, group, budget, 'metrics', m),
          study_cells.values_by_seed(cells, baseline, budget, 'metrics', m), confidence)
      if paired is None:
        row.append(MISSING)
        continue
      seeds.update(paired.seeds)
      p = '' if math.isnan(paired.p_value) else f' (p={number(paired.p_value)})'
      row.append(interval_text(paired.difference) + p)
    rows.append([row[0], ' '.join(map(str, sorted(seeds))) or MISSING, *row[1:]])
  return _table(['group', 'paired seeds', *metrics], rows)


def _ranking_tables(study: study_cells.Study, budget: str, metrics: Sequence[str],
                    confidence: float) -> list[str]:
  lines = []
  cells = [c for c in study.cells if c['budget'] == budget]
  for m in metrics:
    intervals = group_intervals(cells, budget, m, confidence)
    if not intervals:
      continue
    ranks = study_stats.ranking(intervals, study.lower_is_better(m))
    tied = [r.group for r in ranks if r.rank == 1]
    lines += [f'`{m}` ({direction(study.lower_is_better(m))}); rank 1: '
              f'{", ".join(tied)}', '']
    lines += _table(['rank', 'group', 'mean', 'intervals overlap with'],
                    [[str(r.rank), r.group, interval_text(r.interval),
                      ', '.join(r.overlaps) or MISSING] for r in ranks])
  return lines


def markdown(study: study_cells.Study, metrics: Sequence[str], confidence: float,
             plots: Sequence[tuple[str, str]]) -> str:
  """report.md: the command, the metrics' directions, per budget the means, the paired
  differences against the baseline and the rankings, then links to `plots` [(title,
  path relative to report/)]."""
  pct = number(100 * confidence)
  cells = study.cells
  lines = ['# Study report', '',
           f'Made by: `{study.record.get("command", "(study.json records no command)")}`', '',
           f'{len(cells)} cells: {len(study_cells.groups(cells))} groups at budgets '
           f'{", ".join(study_cells.budgets(cells))}. Each entry is the mean over seeds ± '
           f'the half-width of its {pct}% Student t interval; "(1 seed)" marks a mean with no '
           'interval.', '']
  if study.missing:
    lines += [f'Not yet measured ({len(study.missing)} of the cells study.json lists): '
              f'{", ".join(study.missing)}.', '']
  lines += ['## Metrics', '']
  lines += [f'- `{m}`: {direction(study.lower_is_better(m))}' for m in metrics] + ['']
  baseline = study.baseline_group
  for budget in study_cells.budgets(cells):
    lines += [f'## Budget {budget}', '', '### Means over seeds', '']
    lines += _means_table(study, budget, metrics, confidence)
    if any(c['group'] == baseline and c['budget'] == budget for c in cells):
      lines += [f'### Paired differences against {baseline}', '',
                f'group − {baseline} over the seeds both have: mean ± half-width of its '
                f'{pct}% t interval (p: two-sided paired t test).', '']
      lines += _differences_table(study, budget, metrics, confidence)
    lines += ['### Ranking', '',
              'Groups best first by mean; rank = 1 + the number of groups whose interval '
              'lies wholly on the better side (groups tied with the best share rank 1).', '']
    lines += _ranking_tables(study, budget, metrics, confidence)
  if plots:
    lines += ['## Plots', '']
    lines += [f'- [{title}]({path})' for title, path in plots] + ['']
  return '\n'.join(lines)


def results_csv(cells: list[dict]) -> str:
  """One row per cell: its fields, then every hparam, metric, diagnostic and time as
  columns `hparams.NAME`, `metrics.NAME`, `diagnostics.NAME`, `seconds.NAME` (sorted);
  empty where a cell lacks one or its value is None."""
  names = {key: study_cells.metric_names(cells, key) for key in _PREFIXED}
  columns = list(_CELL_COLUMNS)
  for key in _PREFIXED:
    columns += [f'{key}.{name}' for name in names[key]]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(columns)
  for cell in cells:
    row = [cell[k] for k in _CELL_COLUMNS]
    for key in _PREFIXED:
      row += [cell[key].get(name, '') for name in names[key]]
    writer.writerow(row)
  return out.getvalue()


def write_text(path: str, text: str) -> None:
  with artifacts.atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)


def write_hparams(cells: list[dict], folder: str) -> None:
  """TensorBoard's HParams dashboard: one run per cell in folder/CELL, its hparams (with
  group, family, budget and seed) and its metrics as scalars at step 0."""
  for cell in cells:
    writer = metric_writers.create_default_writer(
        os.path.join(folder, study_cells.cell_folder(cell['cell'])), just_logging=False)
    # TensorBoard's hparams take strings, numbers and booleans: an unset option (None, e.g.
    # select.gadc.epsilon_rel) is shown as 'None'.
    hparams = {k: 'None' if v is None else v for k, v in cell['hparams'].items()}
    writer.write_hparams({**hparams, 'group': cell['group'], 'family': cell['family'],
                          'budget': cell['budget'], 'seed': cell['seed']})
    writer.write_scalars(0, cell['metrics'])
    writer.close()
