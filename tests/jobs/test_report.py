"""The report job on synthetic cells: statistics against scipy and closed forms, every number
of report.md re-derived from the cells, results.csv, plots, HParams read back, rebuilds and
bad input."""

import csv
import glob
import hashlib
import json
import math
import os
import re

import ml_collections
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import study_cells
from gadc_jax import study_stats
from gadc_jax.data import input_pipeline
from gadc_jax.jobs import report
from tests.conftest import digits_config

# t_{0.975} with 2 degrees of freedom in closed form: its CDF is 1/2 + t / (2 sqrt(2 + t^2)),
# so t / sqrt(2 + t^2) = 0.95 gives t^2 = 2 * 0.95^2 / (1 - 0.95^2) (4.3027).
T975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


def test_mean_interval_closed_form_and_scipy():
  got = study_stats.mean_interval([1.0, 2.0, 3.0])
  # mean 2, sample std 1, so the half-width is t_{0.975, 2} / sqrt(3).
  assert got.mean == 2.0 and got.n == 3
  assert got.half_width == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-12)
  x = np.random.default_rng(0).normal(size=7)
  low, high = stats.ttest_1samp(x, 0.0).confidence_interval(0.9)
  got = study_stats.mean_interval(x, 0.9)
  assert got.low == pytest.approx(low, rel=1e-10)
  assert got.high == pytest.approx(high, rel=1e-10)
  one = study_stats.mean_interval([4.0])
  assert one.mean == 4.0 and math.isnan(one.half_width) and not one.has_interval
  assert study_stats.mean_interval([2.0, 2.0]).half_width == 0.0
  with pytest.raises(ValueError, match='non-empty'):
    study_stats.mean_interval([])


def test_paired_difference_matches_seeds_and_scipy():
  values = {0: 5.0, 1: 6.5, 2: 4.0, 7: 100.0}
  baseline = {0: 6.0, 1: 7.0, 2: 6.0, 3: -100.0}
  got = study_stats.paired_difference(values, baseline)
  assert got.seeds == (0, 1, 2)
  a, b = np.asarray([5.0, 6.5, 4.0]), np.asarray([6.0, 7.0, 6.0])
  test = stats.ttest_rel(a, b)
  low, high = test.confidence_interval(0.95)
  assert got.difference.mean == pytest.approx(np.mean(a - b))
  assert got.difference.low == pytest.approx(low) and got.difference.high == pytest.approx(high)
  assert got.p_value == pytest.approx(test.pvalue)
  assert study_stats.paired_difference({5: 1.0}, {6: 1.0}) is None
  single = study_stats.paired_difference({0: 1.0}, {0: 3.0})
  assert single.difference.mean == -2.0 and math.isnan(single.p_value)


def test_ranking_ties_where_intervals_overlap():
  iv = study_stats.Interval
  intervals = {'a': iv(1.0, 0.5, 3), 'b': iv(1.2, 0.5, 3), 'c': iv(5.0, 0.1, 3),
               'd': iv(5.05, math.nan, 1)}
  ranks = study_stats.ranking(intervals, lower_is_better=True)
  assert [(r.group, r.rank, r.overlaps) for r in ranks] == [
      ('a', 1, ('b',)), ('b', 1, ('a',)), ('c', 3, ('d',)), ('d', 3, ('c',))]
  higher = study_stats.ranking(intervals, lower_is_better=False)
  assert [(r.group, r.rank) for r in higher] == [('d', 1), ('c', 1), ('b', 3), ('a', 3)]


# ------------------------------------------------------------------------------------------
# A synthetic study: random, gadc and an ablation at two budgets, 3 seeds each (the ablation
# has one seed at 10%), plus a full-data reference; selections of gadc_digits' train split.

METRICS = ('fid_evaluation.train', 'is_evaluation.train', 'cas')
GROUPS = {'random': 'method', 'gadc': 'method', 'gadc-no_ot': 'ablation'}
BUDGETS = {'5%': 0.05, '10%': 0.1}


def _cell(group, family, budget, seed, rng, selection=''):
  name = f'{group}-{budget}-seed{seed}'
  fid = 10.0 - 3 * BUDGETS.get(budget, 1.0) * 10 - (group == 'gadc') + rng.normal(0, 0.3)
  return {
      'cell': name, 'group': group, 'family': family, 'budget': budget,
      'budget_value': BUDGETS.get(budget, 1.0), 'seed': seed,
      'hparams': {'select.method': group.split('-')[0], 'select.budget': budget,
                  'train.steps': 600, 'select.gadc.kappa': 1.05,
                  'select.gadc.epsilon_rel': None},
      'metrics': {'fid_evaluation.train': fid, 'is_evaluation.train': 3 + rng.normal(),
                  'cas': float(rng.uniform(0.5, 0.9))},
      'diagnostics': {'selection.pot_relative_eps': fid / 3 + rng.normal(0, 0.1),
                      'evaluation.mmd': float(rng.uniform())},
      'seconds': {'select': 1.0, 'train': 30.0, 'total': 31.0},
      'selection': selection,
  }


def _write_selection(workdir, name, rng, num_train):
  """A hand-made selection folder: 3 images of each of the 10 digits classes."""
  folder = os.path.join(workdir, 'selections', name)
  os.makedirs(folder, exist_ok=True)
  positions = rng.choice(num_train, 30, replace=False)
  artifacts.atomic_write_npz(os.path.join(folder, 'selection.npz'),
                             offsets=np.arange(0, 31, 3), positions=positions,
                             indices=np.zeros(30, np.int64), ids=np.asarray(['x'] * 30),
                             labels=np.repeat(np.arange(10), 3).astype(np.int32))
  artifacts.atomic_write_json(os.path.join(folder, 'selection.json'),
                              {'config': {'split': 'train'}})
  return f'selections/{name}'


def make_study(workdir, num_train=None):
  """Writes study.json and cells; with num_train, the method cells get selections."""
  rng = np.random.default_rng(0)
  cells = []
  for budget in BUDGETS:
    for group, family in GROUPS.items():
      seeds = [0] if (group == 'gadc-no_ot' and budget == '10%') else [0, 1, 2]
      for seed in seeds:
        selection = ''
        if num_train and family == 'method':
          selection = _write_selection(workdir, f'{group}-{budget}-seed{seed}', rng, num_train)
        cells.append(_cell(group, family, budget, seed, rng, selection))
  cells += [_cell('full', 'reference', 'full', s, rng) for s in (0, 1)]
  for cell in cells:
    artifacts.atomic_write_json(study_cells.cell_path(workdir, cell['cell']), cell)
  artifacts.atomic_write_json(study_cells.study_path(workdir), {
      'command': 'python main.py --config=configs/digits_study.py --workdir=w',
      'config': {}, 'cells': [c['cell'] for c in cells] + ['gadc-10%-seed9'],
      'baseline_group': 'random',
      'lower_is_better': ['fid_evaluation.train']})
  return cells


def _config(tfds_dir):
  config = ml_collections.ConfigDict()
  config.data = digits_config(tfds_dir).data
  config.report = defaults.report()
  config.report.grid_classes = 3
  config.report.grid_per_class = 2
  return config


@pytest.fixture(scope='module')
def built(tmp_path_factory, tfds_dir):
  config = _config(tfds_dir)
  workdir = str(tmp_path_factory.mktemp('study'))
  num_train = input_pipeline.split_info(config.data, 'train').num_examples
  cells = make_study(workdir, num_train)
  result = report.run(config, workdir)
  return config, workdir, cells, result


def tables(text, heading):
  """{first cell: row} of the first Markdown table after `heading`."""
  lines = text.split(heading, 1)[1].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('|'))
  end = next((i for i in range(start, len(lines)) if not lines[i].startswith('|')), len(lines))
  rows = lines[start:end]
  header = [c.strip() for c in rows[0].strip('|').split('|')]
  return header, {r.strip('|').split('|')[0].strip(): [c.strip() for c in r.strip('|').split('|')]
                  for r in rows[2:]}


def independent_interval(values):
  """mean ± t_{0.975,n-1} s / sqrt(n) in NumPy and scipy.stats.t.ppf, 4 significant digits."""
  x = np.asarray(values)
  if len(x) == 1:
    return f'{x[0]:.4g} (1 seed)'
  half = stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
  return f'{np.mean(x):.4g} ± {half:.4g}'


def test_every_mean_in_report_md_is_recomputed_from_the_cells(built):
  _, workdir, cells, result = built
  text = open(result['report']).read()
  assert 'Made by: `python main.py --config=configs/digits_study.py --workdir=w`' in text
  assert '- `fid_evaluation.train`: lower is better' in text
  assert '- `cas`: higher is better' in text
  assert 'gadc-10%-seed9' in text.split('## Metrics')[0]  # listed, not measured
  for budget in (*BUDGETS, 'full'):
    section = text.split(f'## Budget {budget}\n', 1)[1]
    header, rows = tables(section, '### Means over seeds')
    metrics = header[3:]
    assert metrics == sorted(METRICS)
    groups = [g for g in (*GROUPS, 'full') if any(
        c['group'] == g and c['budget'] == budget for c in cells)]
    assert list(rows) == groups
    for group in groups:
      mine = [c for c in cells if c['group'] == group and c['budget'] == budget]
      assert rows[group][2] == str(len(mine))
      for i, metric in enumerate(metrics):
        assert rows[group][3 + i] == independent_interval([c['metrics'][metric] for c in mine])


def test_paired_differences_in_report_md(built):
  _, _, cells, result = built
  text = open(result['report']).read()
  assert '## Budget full' in text and 'against random' not in text.split('## Budget full')[1]
  section = text.split('## Budget 5%\n', 1)[1]
  header, rows = tables(section, '### Paired differences against random')
  assert list(rows) == ['gadc', 'gadc-no_ot']
  for group in rows:
    assert rows[group][1] == '0 1 2'
    for i, metric in enumerate(header[2:]):
      by_seed = lambda g: [c['metrics'][metric] for c in sorted(
          (c for c in cells if c['group'] == g and c['budget'] == '5%'), key=lambda c: c['seed'])]
      a, b = np.asarray(by_seed(group)), np.asarray(by_seed('random'))
      test = stats.ttest_rel(a, b)
      low, high = test.confidence_interval(0.95)
      assert rows[group][2 + i] == (f'{np.mean(a - b):.4g} ± {(high - low) / 2:.4g} '
                                    f'(p={test.pvalue:.4g})')
  # at 10% the ablation has one seed: a difference without interval or p.
  section = text.split('## Budget 10%\n', 1)[1]
  _, rows = tables(section, '### Paired differences against random')
  assert rows['gadc-no_ot'][1] == '0' and rows['gadc-no_ot'][2].endswith('(1 seed)')


def test_ranking_in_report_md(built):
  _, _, cells, result = built
  section = open(result['report']).read().split('## Budget 5%\n', 1)[1].split('## Budget')[0]
  for metric, lower in (('fid_evaluation.train', True), ('cas', False)):
    intervals = {}
    for g in GROUPS:
      x = np.asarray([c['metrics'][metric] for c in cells
                      if c['group'] == g and c['budget'] == '5%'])
      half = stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
      intervals[g] = (np.mean(x) - half, np.mean(x), np.mean(x) + half)
    best = min(intervals, key=lambda g: intervals[g][1] * (1 if lower else -1))
    tied = [g for g in intervals
            if intervals[g][0] <= intervals[best][2] and intervals[best][0] <= intervals[g][2]]
    line = re.search(rf'`{re.escape(metric)}` \((\w+) is better\); rank 1: (.*)', section)
    assert line.group(1) == ('lower' if lower else 'higher')
    assert sorted(line.group(2).split(', ')) == sorted(tied)


def test_results_csv_has_a_row_per_cell_and_every_value(built):
  _, workdir, cells, _ = built
  with open(os.path.join(workdir, 'report', 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['cell'] for r in rows] == [c['cell'] for c in cells]
  for row, cell in zip(rows, cells):
    assert row['group'] == cell['group'] and int(row['seed']) == cell['seed']
    for key in ('hparams', 'metrics', 'diagnostics', 'seconds'):
      for name, value in cell[key].items():
        assert row[f'{key}.{name}'] == ('' if value is None else str(value))


def test_plots_exist_and_report_md_links_them(built):
  _, workdir, _, result = built
  folder = os.path.join(workdir, 'report')
  text = open(result['report']).read()
  links = re.findall(r'\]\((plots/[^)]+)\)', text)
  expected = ({f'plots/budget-{m}.png' for m in METRICS}
              | {f'plots/bars-{m}-{b}.png' for m in METRICS for b in ('5pct', '10pct', 'full')}
              | {'plots/diagnostic-selection.pot_relative_eps.png',
                 'plots/diagnostic-evaluation.mmd.png',
                 'plots/selections-5pct.png', 'plots/selections-10pct.png'})
  assert set(links) == expected
  assert sorted(os.listdir(os.path.join(folder, 'plots'))) == sorted(
      os.path.basename(p) for p in expected)
  for link in links:
    with Image.open(os.path.join(folder, link)) as image:
      assert image.format == 'PNG' and min(image.size) > 100


def test_spearman_title_against_scipy():
  from gadc_jax import study_plots  # pylint: disable=g-import-not-at-top
  x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
  rho = stats.spearmanr(x, y)
  assert rho.statistic == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
  assert study_plots.spearman_title(x, y).startswith(f'Spearman rho {0.8:.4g} (p ')
  assert 'undefined' in study_plots.spearman_title([1.0, 2.0], [1.0, 2.0])
  assert 'undefined' in study_plots.spearman_title([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_hparams_read_back_from_event_files(built):
  _, workdir, cells, _ = built
  for cell in (cells[0], cells[-1]):
    (path,) = glob.glob(os.path.join(workdir, 'report', 'hparams', cell['cell'],
                                     'events.out.tfevents.*'))
    scalars, hparams = {}, None
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == '_hparams_/session_start_info':
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          hparams = {k: (v.string_value or v.number_value)
                     for k, v in data.session_start_info.hparams.items()}
        elif not value.tag.startswith('_hparams_'):
          scalars[value.tag] = float(tf.make_ndarray(value.tensor))
    assert scalars == pytest.approx(cell['metrics'])
    assert hparams['group'] == cell['group'] and hparams['seed'] == cell['seed']
    assert hparams['select.method'] == cell['hparams']['select.method']
    assert hparams['train.steps'] == 600 and hparams['select.gadc.epsilon_rel'] == 'None'


def _digest(folder):
  return {os.path.relpath(p, folder): hashlib.sha256(open(p, 'rb').read()).hexdigest()
          for p in glob.glob(os.path.join(folder, '**', '*'), recursive=True)
          if os.path.isfile(p)}


def test_rebuild_regenerates_and_leaves_the_cells_alone(built):
  config, workdir, _, _ = built
  cells_before = _digest(os.path.join(workdir, 'cells'))
  report_dir = os.path.join(workdir, 'report')
  before = _digest(report_dir)
  stray = os.path.join(report_dir, 'plots', 'stale.png')
  open(stray, 'w').close()
  report.run(config, workdir)
  after = _digest(report_dir)
  assert not os.path.exists(stray)
  assert after['report.md'] == before['report.md']
  assert after['results.csv'] == before['results.csv']
  assert sorted(k for k in after if 'tfevents' not in k) == sorted(
      k for k in before if 'tfevents' not in k)
  assert _digest(os.path.join(workdir, 'cells')) == cells_before
  assert not [n for n in os.listdir(workdir) if n.startswith('.tmp')]


def test_bad_input_is_one_line_naming_the_file(tmp_path, tfds_dir):
  config = _config(tfds_dir)
  workdir = str(tmp_path)
  missing = re.escape(f'{workdir}/study.json does not exist')
  with pytest.raises(FileNotFoundError, match=missing):
    report.run(config, workdir)
  artifacts.atomic_write_json(study_cells.study_path(workdir), {'cells': []})
  with pytest.raises(ValueError, match='no cells in'):
    report.run(config, workdir)
  cells = make_study(workdir)
  report.run(config, workdir)
  kept = open(os.path.join(workdir, 'report', 'report.md')).read()
  path = study_cells.cell_path(workdir, cells[1]['cell'])
  broken = {k: v for k, v in cells[1].items() if k not in ('metrics', 'seed')}
  artifacts.atomic_write_json(path, broken)
  with pytest.raises(ValueError) as error:
    report.run(config, workdir)
  assert str(error.value) == f'{path} lacks the key(s) seed, metrics of a cell'
  assert open(os.path.join(workdir, 'report', 'report.md')).read() == kept
  artifacts.atomic_write_json(path, {**cells[1], 'metrics': {'cas': 'high'}})
  with pytest.raises(ValueError, match=re.escape(f'{path}: metrics.cas must be a number')):
    report.run(config, workdir)
  artifacts.atomic_write_json(path, {**cells[1], 'seed': cells[0]['seed']})
  with pytest.raises(ValueError, match='one cell per budget and seed'):
    report.run(config, workdir)
  artifacts.atomic_write_json(path, cells[1])
  config.report.metrics = ('fid_evaluation.test',)
  with pytest.raises(ValueError, match='config.report.metrics names fid_evaluation.test'):
    report.run(config, workdir)
  assert open(os.path.join(workdir, 'report', 'report.md')).read() == kept
  assert json.load(open(path)) == cells[1]


def test_main_reports_a_missing_study_in_one_line(tmp_path):
  from tests.test_main import error_line, run_main  # pylint: disable=g-import-not-at-top
  result = run_main('--config.job=report', workdir=str(tmp_path))
  assert result.returncode == 2
  assert error_line(result) == f'error: {tmp_path}/study.json does not exist'
