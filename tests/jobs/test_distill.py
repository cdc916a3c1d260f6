"""The distill job at smoke size: cells in the shared format, the table, reruns skip, and a
teacher pool too small for an IPC fails before any work."""

import os
import runpy

import pytest

from gadc_jax import artifacts
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax.distill import students as students_lib
from conftest import REPO  # pylint: disable=g-bad-import-order

_CELL_KEYS = {'cell', 'group', 'family', 'budget', 'budget_value', 'seed', 'hparams', 'metrics',
              'diagnostics', 'seconds', 'selection'}


@pytest.fixture
def distill_config(tfds_dir):
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits_distill.py'))['get_config'](
      'smoke=True')
  config.data.data_dir = tfds_dir
  # Fewer networks and rows than the smoke run: one of each kind of stage.
  config.classifier.networks = ('teacher_a', 'surrogate')
  config.train_students.lia.pool = ('teacher_a',)
  config.train_students.students = ('student_mlp',)
  config.distill.rows = ('igd', 'full', 'gadc')
  config.lock()  # as main.py hands it to the job
  return config


# The distillation pipeline end to end at smoke size: CI runs it.
def test_smoke_writes_cells_and_table_and_reruns_skip(distill_config, tmp_path, capsys,
                                                      monkeypatch):
  workdir = str(tmp_path)
  jobs.run('distill', distill_config, workdir)
  root = layout.distill_dir(workdir)
  study = artifacts.read_json(os.path.join(root, 'study.json'))
  rows = distill_config.distill.rows
  assert study['cells'] == [f'{row}-ipc2-seed0' for row in rows]
  for name in study['cells']:
    cell = artifacts.read_json(os.path.join(root, 'cells', name, 'cell.json'))
    assert _CELL_KEYS <= set(cell)
    assert cell['budget'] == 'ipc2' and cell['budget_value'] == 2
    assert set(cell['metrics']) == {'top1_student_mlp'}
    assert all(0 <= v <= 1 for v in cell['metrics'].values())
    assert all(isinstance(v, (int, float, str, bool)) for v in cell['hparams'].values())
  full = artifacts.read_json(os.path.join(root, 'cells', 'full-ipc2-seed0', 'cell.json'))
  igd = artifacts.read_json(os.path.join(root, 'cells', 'igd-ipc2-seed0', 'cell.json'))
  gadc = artifacts.read_json(os.path.join(root, 'cells', 'gadc-ipc2-seed0', 'cell.json'))
  assert full['images'] == 'distilled:igd+otg-ipc2-seed0' and full['selection'] == ''
  assert igd['hparams']['train_students.labels'] == 'hard'
  assert gadc['selection'] == os.path.join('selections', 'gadc-2perclass-seed0')
  printed = capsys.readouterr().out
  assert '| full | ipc2 |' in printed and '| gadc | ipc2 |' in printed
  assert os.path.isfile(os.path.join(root, 'report', 'report.md'))
  assert os.path.isfile(os.path.join(root, 'report', 'results.csv'))

  def no_training(*args, **kwargs):
    raise AssertionError('a finished cell was trained again')

  monkeypatch.setattr(students_lib, 'train_student', no_training)
  jobs.run('distill', distill_config, workdir)


def test_pool_smaller_than_the_map_asks_fails_before_any_work(distill_config, tmp_path):
  distill_config.distill.ipcs = (10,)
  with pytest.raises(ValueError, match='IPC 10 asks for 2 teachers but '
                     r'config.train_students.lia.pool has only 1') as e:
    jobs.run('distill', distill_config, str(tmp_path))
  assert '\n' not in str(e.value)
  assert os.listdir(tmp_path) == []


def test_ipc_above_the_sampler_limit_fails_before_any_work(distill_config, tmp_path):
  distill_config.distill.ipcs = (2, 8)
  distill_config.distill_sample.max_ipc = 5
  with pytest.raises(ValueError, match="IPC 8 exceeds the sampler's batch limit "
                     'config.distill_sample.max_ipc 5'):
    jobs.run('distill', distill_config, str(tmp_path))
  assert os.listdir(tmp_path) == []
