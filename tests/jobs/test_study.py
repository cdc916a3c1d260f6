"""The study job on the smoke digits study: the grid, every cell.json against the format the
report reads, study.json, the report it ends with, and a study killed after its first cell
resuming without redoing it."""

import csv
import os
import re
import runpy

import pytest

from gadc_jax import jobs
from gadc_jax import study
from gadc_jax.jobs import study as study_job
from tests.conftest import REPO
from tests.jobs import test_report

_CELL_KEYS = {'cell', 'group', 'family', 'budget', 'budget_value', 'seed', 'hparams', 'metrics',
              'diagnostics', 'seconds', 'selection', 'fingerprint'}


def study_config(tfds_dir: str, arg: str = 'smoke=True'):
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits_study.py'))['get_config'](arg)
  config.data.data_dir = tfds_dir
  return config


def test_default_grid_is_37_cells_with_five_gadc_ablations():
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits_study.py'))['get_config']()
  grid = study.cells(config)
  assert len(grid) == 7 * 3 + 5 * 3 + 1
  assert len({c.name for c in grid}) == len(grid)
  by_group = {c.group: c for c in grid}
  assert set(by_group) == {'random', 'herding', 'kcenter', 'ccs', 'dq', 'd2c', 'gadc', 'full',
                           'gadc-no_ot', 'gadc-no_moment', 'gadc-no_ce', 'gadc-kappa_1',
                           'gadc-no_refinement'}
  ablated = study.cell_config(config, by_group['gadc-no_ot'])
  assert ablated.select.method == 'gadc' and ablated.select.gadc.w_pot == 0.0
  assert study.cell_config(config, by_group['gadc-kappa_1']).select.gadc.kappa == 1.0
  assert study.cell_config(config, by_group['gadc-no_refinement']).select.gadc.rounds == 0
  full = study.cell_config(config, by_group['full'])
  assert full.train.selection == '' and by_group['full'].family == 'reference'
  # A method that reads no seed makes one selection for all three seeds; a seeded one three.
  made = [cfg.select for cfg in study.selections(config, grid)]
  assert len(made) == 3 * 3 + 4 + 5
  names = {s.name for s in made}
  assert {'random-10%-seed0', 'random-10%-seed2', 'herding-10%', 'gadc-10%',
          'gadc-no_ot-10%'} <= names and len(names) == len(made)
  gadc = [study.cell_config(config, c) for c in grid if c.group == 'gadc']
  assert [c.train.seed for c in gadc] == [0, 1, 2]
  assert all(c.select == gadc[0].select for c in gadc)
  randoms = [study.cell_config(config, c).select for c in grid if c.group == 'random']
  assert [s.seed for s in randoms] == [0, 1, 2]


@pytest.mark.parametrize('key, value, match', [
    ('methods', ('random', 'nope'), 'unknown method'),
    ('budgets', ('10 percent',), 'config.study.budgets'),
    ('seeds', (0, -1), 'seeds'),
    ('seeds', (0, 0), 'twice'),
])
def test_bad_study_config_is_one_line_error(key, value, match):
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits_study.py'))['get_config']()
  config.study[key] = value
  with pytest.raises(ValueError, match=match):
    study.check_config(config)


def test_unknown_ablation_key_is_refused():
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits_study.py'))['get_config']()
  config.study.ablations.no_ot.select.gadc['w_potato'] = 0.0
  with pytest.raises(ValueError, match='no_ot: the config has no key select.gadc.w_potato'):
    study.check_config(config)


# The smoke study end to end: CI runs it (two cells, about two minutes).
def test_smoke_study_writes_cells_and_resumes_after_a_kill(tmp_path, tfds_dir, monkeypatch):
  config = study_config(tfds_dir)
  config.study.methods = ('random',)  # two cells: enough for a kill between them.
  config.study.full_reference = False
  workdir = str(tmp_path)
  grid = study.cells(config)
  assert [c.name for c in grid] == ['random-10%-seed0', 'random-10%-seed1']

  real = study_job.run_cell

  def killed_at_the_second_cell(c, w, cell):
    # By name: the smoke study's two workers start both cells at once, in either order.
    if cell.name == 'random-10%-seed1':
      raise KeyboardInterrupt
    return real(c, w, cell)

  monkeypatch.setattr(study_job, 'run_cell', killed_at_the_second_cell)
  with pytest.raises(KeyboardInterrupt):
    jobs.run('study', config, workdir)
  first = os.path.join(workdir, 'cells', 'random-10%-seed0', 'cell.json')
  assert os.path.exists(first)
  assert not os.path.exists(os.path.join(workdir, 'cells', 'random-10%-seed1', 'cell.json'))
  mtime = os.stat(first).st_mtime_ns

  ran = []
  monkeypatch.setattr(study_job, 'run_cell',
                      lambda c, w, cell: ran.append(cell.name) or real(c, w, cell))
  jobs.run('study', config, workdir)
  assert ran == ['random-10%-seed1']
  assert os.stat(first).st_mtime_ns == mtime

  record = study.artifacts.read_json(os.path.join(workdir, 'study.json'))
  assert record['cells'] == [c.name for c in grid]
  assert record['baseline_group'] == 'random'
  assert 'fid_evaluation.test' in record['lower_is_better']
  assert 'precision_evaluation.test' not in record['lower_is_better']
  assert record['config']['study']['seeds'] == [0, 1]
  for cell in grid:
    rec = study.finished(config, workdir, cell)
    assert set(rec) == _CELL_KEYS
    assert (rec['cell'], rec['group'], rec['family'], rec['budget'], rec['seed']) == (
        cell.name, 'random', 'method', '10%', cell.seed)
    assert rec['budget_value'] == 0.1
    for split in ('train', 'test'):
      for name in ('fid', 'kid', 'is', 'precision', 'recall'):
        assert isinstance(rec['metrics'][f'{name}_evaluation.{split}'], float)
    assert 0.0 <= rec['metrics']['cas'] <= 1.0
    assert not any('_std_' in k for k in rec['metrics'])
    assert {'selection.w2', 'evaluation.w2'} <= set(rec['diagnostics'])
    assert set(rec['seconds']) == {'select', 'selection_made', 'train', 'sample', 'evaluate',
                                   'cas', 'total'}
    assert all(isinstance(v, (int, float, str, bool)) for v in rec['hparams'].values())
    assert rec['hparams']['select.seed'] == rec['hparams']['train.seed'] == cell.seed
    assert rec['selection'] == f'selections/{cell.name}'
    assert os.path.exists(os.path.join(workdir, rec['selection'], 'selection.json'))
  # The report the study ends with: every mean in report.md recomputed from the cells' JSON,
  # a results.csv row per cell, every linked plot on disk.
  report_dir = os.path.join(workdir, 'report')
  text = open(os.path.join(report_dir, 'report.md')).read()
  header, rows = test_report.tables(text.split('## Budget 10%\n', 1)[1], '### Means over seeds')
  cells = [study.finished(config, workdir, cell) for cell in grid]
  assert list(rows) == ['random'] and rows['random'][2] == '2'
  assert header[3:] and set(header[3:]) <= set(cells[0]['metrics'])
  for i, metric in enumerate(header[3:]):
    assert rows['random'][3 + i] == test_report.independent_interval(
        [c['metrics'][metric] for c in cells]), metric
  with open(os.path.join(report_dir, 'results.csv')) as f:
    assert [row['cell'] for row in csv.DictReader(f)] == [c.name for c in grid]
  links = re.findall(r'\]\((plots/[^)]+)\)', text)
  assert links and all(os.path.exists(os.path.join(report_dir, link)) for link in links)

  # Each reference is its own evaluation of the cell's samples.
  evals = os.path.join(workdir, 'cells', 'random-10%-seed0', 'eval')
  assert {'train.json', 'test.json'} <= set(os.listdir(evals))

  # A finished cell from other inputs is refused, naming its cell.json.
  config.train.steps += 1
  with pytest.raises(ValueError, match='cell.json: study cell fingerprint mismatch'):
    jobs.run('study', config, workdir)


def test_imagenet_study_is_the_papers_grid():
  get_config = runpy.run_path(os.path.join(REPO, 'configs', 'imagenet_study.py'))['get_config']
  config = get_config()
  grid = study.cells(config)
  assert len(grid) == 5 * 3 * 3 + 5 * 3 * 3 + 1
  assert {c.budget for c in grid if c.family == 'method'} == {'10/class', '50/class',
                                                             '100/class'}
  assert [c.folder for c in grid][0] == 'random-10perclass-seed0'
  # ADM's reference batch has no default path: the check names the key to set.
  with pytest.raises(ValueError, match='config.study.references.train is empty'):
    study.check_config(config)
  config.study.references.train = '/data/VIRTUAL_imagenet256_labeled.npz'
  # No ImageNet here: the next check, of CAS's split, names its key and the manual download.
  with pytest.raises(ValueError, match='config.study.cas.split: imagenet2012 is not prepared'):
    study.check_config(config)
  assert len(study.cells(get_config('smoke=True'))) == 2 * 2 + 1
