"""The study's plots (matplotlib, Agg): what a person looks at rather than reads.

    metric against budget per group, with the t interval as a band (reference groups as a
    horizontal line and band); a bar chart per metric at each budget with the intervals as
    error bars; each diagnostic against FID over the cells, Spearman's rho in the title; the
    selections of the groups side by side, a row per class.
"""

import math
from typing import Mapping, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from scipy import stats

from gadc_jax import artifacts
from gadc_jax import report
from gadc_jax import study_cells
from gadc_jax import study_report


def slug(text: str) -> str:
  """A file-name part for a metric or budget name ('10%' -> '10pct', '10/class' ->
  '10perclass'): no characters a Markdown link or a shell would need to escape."""
  return ''.join(ch if ch.isalnum() or ch in '._-' else {'%': 'pct', '/': 'per'}.get(ch, '_')
                 for ch in text)


def _save(fig, path: str) -> None:
  with artifacts.atomic_path(path) as tmp:
    fig.savefig(tmp, format='png', dpi=110, bbox_inches='tight')
  plt.close(fig)


def metric_against_budget(study: study_cells.Study, metric: str, confidence: float,
                          path: str) -> None:
  cells = study.cells
  budgets = study_cells.budgets(cells)
  measured = [c for c in cells if c['family'] != 'reference']
  placed = study_cells.groups(measured)
  # Groups side by side around each budget, so that their error bars do not hide each other
  # (the whole plot is one column of points when the study has one budget).
  dodge = 0.01 * max((c['budget_value'] for c in measured), default=0.0)
  fig, ax = plt.subplots(figsize=(6, 4))
  for group in study_cells.groups(cells):
    mine = [c for c in cells if c['group'] == group]
    points = []
    for budget in budgets:
      interval = study_report.group_intervals(
          [c for c in mine if c['budget'] == budget], budget, metric, confidence).get(group)
      if interval is not None:
        value = next(c['budget_value'] for c in mine if c['budget'] == budget)
        points.append((value, interval))
    if not points:
      continue
    x = np.asarray([p[0] for p in points])
    mean = np.asarray([p[1].mean for p in points])
    half = np.nan_to_num(np.asarray([p[1].half_width for p in points]))
    if mine[0]['family'] == 'reference':
      line = ax.axhline(mean[0], ls='--', lw=1, color='k', label=f'{group} (reference)')
      ax.axhspan(mean[0] - half[0], mean[0] + half[0], color=line.get_color(), alpha=0.1)
      continue
    x = x + (placed.index(group) - (len(placed) - 1) / 2) * dodge
    line = ax.errorbar(x, mean, yerr=half, marker='o', capsize=3, label=group,
                       ls='--' if mine[0]['family'] == 'ablation' else '-').lines[0]
    ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
  ticks = {c['budget_value']: c['budget'] for c in measured}
  ax.set_xticks(list(ticks), list(ticks.values()))
  ax.set_xlabel('budget')
  ax.set_ylabel(metric)
  ax.set_title(f'{metric} ({study_report.direction(study.lower_is_better(metric))}), '
               f'{study_report.number(100 * confidence)}% intervals', fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  _save(fig, path)


def bars_at_budget(study: study_cells.Study, metric: str, budget: str, confidence: float,
                   path: str) -> None:
  intervals = study_report.group_intervals(study.cells, budget, metric, confidence)
  groups = list(intervals)
  fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(groups) + 1), 4))
  means = [intervals[g].mean for g in groups]
  halves = [0 if not intervals[g].has_interval else intervals[g].half_width for g in groups]
  colors = ['C1' if g == study.baseline_group else 'C0' for g in groups]
  ax.bar(range(len(groups)), means, yerr=halves, capsize=3, color=colors)
  ax.set_xticks(range(len(groups)), groups, rotation=45, ha='right', fontsize=8)
  ax.set_ylabel(metric)
  better = study_report.direction(study.lower_is_better(metric))
  ax.set_title(f'{metric} at budget {budget} ({better})', fontsize=9)
  ax.grid(axis='y', alpha=0.3)
  _save(fig, path)


def spearman_title(x: Sequence[float], y: Sequence[float]) -> str:
  """'Spearman rho R (p P, n N)', or why it is undefined (fewer than 3 points, a constant)."""
  n = len(x)
  if n < 3:
    return f'Spearman rho undefined (n={n} < 3)'
  if len(set(x)) < 2 or len(set(y)) < 2:
    return f'Spearman rho undefined (a constant, n={n})'
  result = stats.spearmanr(x, y)
  return (f'Spearman rho {study_report.number(result.statistic)} '
          f'(p {study_report.number(result.pvalue)}, n={n})')


def diagnostic_against_fid(cells: list[dict], diagnostic: str, fid_metric: str,
                           path: str) -> None:
  both = [c for c in cells if diagnostic in c['diagnostics'] and fid_metric in c['metrics']
          and math.isfinite(c['diagnostics'][diagnostic])
          and math.isfinite(c['metrics'][fid_metric])]
  fig, ax = plt.subplots(figsize=(5, 4))
  for group in study_cells.groups(both):
    mine = [c for c in both if c['group'] == group]
    ax.scatter([c['diagnostics'][diagnostic] for c in mine],
               [c['metrics'][fid_metric] for c in mine], label=group, s=18)
  ax.set_xlabel(diagnostic)
  ax.set_ylabel(fid_metric)
  ax.set_title(spearman_title([c['diagnostics'][diagnostic] for c in both],
                              [c['metrics'][fid_metric] for c in both]), fontsize=9)
  if both:
    ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  _save(fig, path)


def selections_side_by_side(rows_by_group: Mapping[str, Sequence[Sequence[np.ndarray]]],
                            title: str, path: str) -> None:
  """One panel per group: its images, a row per class (report.image_grid)."""
  groups = list(rows_by_group)
  fig, axes = plt.subplots(1, len(groups), figsize=(2.2 * len(groups), 2.6), squeeze=False)
  for ax, group in zip(axes[0], groups):
    grid = report.image_grid(rows_by_group[group])
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray',
              interpolation='nearest')
    ax.set_title(group, fontsize=8)
    ax.axis('off')
  fig.suptitle(title, fontsize=9, y=1.04)
  _save(fig, path)
