"""Fault injection on the selection: probes 1, 3, 5b, 6 and 7 of issue 14.

Probe 1: a swapped or truncated selection.npz is refused by the train job's reader and
rebuilt, alone, by the select job. Probe 3: config.select is checked before any work.
Probe 5b: a folder dataset's version covers its files' content. Probe 6: NaN/Inf in any
selection input of any feature space, empty class folders and a missing split are named.
Probe 7: a cost scale far from the preset's calibration is a warning with its number.
"""

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import jobs
from gadc_jax.data import input_pipeline
from gadc_jax.selection import objective
from gadc_jax.selection import problem as problem_lib
from gadc_jax.training import dataset
from tests.faults.conftest import main, one_error_line, snapshot

SELECTION = os.path.join('selections', 'gadc-10%-seed0')


def _npz(workdir: str) -> str:
  return os.path.join(workdir, SELECTION, 'selection.npz')


def _recorded(workdir: str) -> dict:
  return artifacts.read_json(os.path.join(workdir, SELECTION, 'selection.json'))['artifacts']


def _swap_in_another_selection(workdir: str) -> None:
  """Overwrites selection.npz with a valid one of another selection (3 images per class)."""
  with np.load(_npz(workdir)) as z:
    arrays = {k: z[k] for k in z.files}
  keep = np.concatenate([np.arange(a, a + 3) for a in arrays['offsets'][:-1]])
  num_classes = len(arrays['offsets']) - 1
  np.savez(_npz(workdir), offsets=np.arange(0, 3 * num_classes + 1, 3),
           **{k: arrays[k][keep] for k in ('indices', 'positions', 'ids', 'labels')})


def _truncate(workdir: str) -> None:
  size = os.path.getsize(_npz(workdir))
  with open(_npz(workdir), 'r+b') as f:
    f.truncate(size // 2)


@pytest.mark.parametrize('damage', [_swap_in_another_selection, _truncate])
def test_probe1_train_refuses_a_swapped_or_truncated_selection(run_copy, damage):
  config, workdir = run_copy
  recorded = _recorded(workdir)['selection.npz']
  damage(workdir)
  found = artifacts.file_fingerprint(_npz(workdir))
  # One ValueError with both fingerprints: the one recorded and the one found.
  expected = (rf'selection\.npz has content {found} \(\d+ bytes\), not the '
              rf'{recorded["sha256"]} \({recorded["size"]} bytes\)')
  with pytest.raises(ValueError, match=expected):
    dataset.training_positions(config, workdir)
  with pytest.raises(ValueError, match=expected):  # the train job reads through it.
    jobs.run('train', config, workdir)


@pytest.mark.parametrize('damage', [_swap_in_another_selection, _truncate])
def test_probe1_select_rebuilds_exactly_the_damaged_selection(run_copy, damage):
  config, workdir = run_copy
  before = snapshot(workdir)
  damage(workdir)
  os.remove(os.path.join(workdir, SELECTION, 'grid.png'))
  jobs.run('select', config, workdir)
  artifacts.verify_files(os.path.join(workdir, SELECTION), _recorded(workdir), 'rebuilt')
  after = snapshot(workdir)
  rebuilt = {os.path.join(SELECTION, 'selection.npz'), os.path.join(SELECTION, 'grid.png')}
  assert {k: v for k, v in after.items() if k not in rebuilt} == {
      k: v for k, v in before.items() if k not in rebuilt}
  assert set(after) == set(before)
  dataset.training_positions(config, workdir)  # the reader accepts it again.


def test_probe1_rebuild_from_changed_class_files_is_refused(run_copy):
  config, workdir = run_copy
  path = os.path.join(workdir, SELECTION, 'classes', 'class-00002.json')
  record = artifacts.read_json(path)
  record['indices'] = record['indices'][::-1]
  artifacts.atomic_write_json(path, record)
  _truncate(workdir)
  with pytest.raises(ValueError, match='rebuilt from its class files.*has content'):
    jobs.run('select', config, workdir)


@pytest.mark.parametrize('key,value,named', [
    ('budget', 'inf%', 'select.budget'), ('budget', 'nan', 'select.budget'),
    ('budget', '-5', 'select.budget'), ('budget', '0/class', 'select.budget'),
    ('classes_per_batch', 0, 'config.select.classes_per_batch'),
    ('grid_classes', -1, 'config.select.grid_classes'),
    ('grid_per_class', 0, 'config.select.grid_per_class'),
    ('method', 'best', 'unknown selection method'),
    ('gadc.kappa', 0.5, 'config.select.gadc.kappa'),
    ('gadc.epsilon', 0.0, 'config.select.gadc.epsilon'),
    ('gadc.epsilon_rel', -0.1, 'config.select.gadc.epsilon_rel'),
    ('gadc.rounds', -1, 'config.select.gadc.rounds'),
    ('gadc.shortlist', 0, 'config.select.gadc.shortlist'),
    ('gadc.sinkhorn_max_iterations', 0, 'config.select.gadc.sinkhorn_max_iterations'),
    ('gadc.sinkhorn_threshold', -1e-5, 'config.select.gadc.sinkhorn_threshold'),
    ('gadc.mode', 'slow', 'config.select.gadc.mode'),
    ('diagnostics.knn_k', 0, 'config.select.diagnostics.knn_k'),
])
def test_probe3_select_config_is_checked_before_any_work(finished_run, tmp_path, key,
                                                         value, named):
  config, _ = finished_run
  config = config.copy_and_resolve_references()
  section, _, name = key.rpartition('.')
  (config.select[section] if section else config.select)[name] = value
  # An empty workdir: a check after any work would fail on the missing features instead.
  with pytest.raises(ValueError, match=named):
    jobs.run('select', config, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('method,key,value', [
    ('ccs', 'beta', 1.5), ('dq', 'num_bins', 0), ('d2c', 'mode', 'middle')])
def test_probe3_baseline_options_are_checked(finished_run, tmp_path, method, key, value):
  config, _ = finished_run
  config = config.copy_and_resolve_references()
  config.select.method = method
  config.select[method][key] = value
  with pytest.raises(ValueError, match=f'config.select.{method}.{key}'):
    jobs.run('select', config, str(tmp_path))


def test_probe3_infinite_budget_is_one_line_exit_2(finished_run, tmp_path, tfds_dir):
  result = main(str(tmp_path), tfds_dir, '--config.job=select', '--config.select.budget=inf%')
  assert result.returncode == 2
  assert "select.budget 'inf%'" in one_error_line(result)


def _poison(workdir: str, network: str, field: str, c: int, row: int, value: float) -> None:
  store = os.path.join(workdir, 'features', f'{network}-train')
  offsets = artifacts.read_json(os.path.join(store, 'manifest.json'))['offsets']
  array = np.load(os.path.join(store, f'{field}.npy'))
  array.reshape(len(array), -1)[offsets[c] + row, 0] = value
  np.save(os.path.join(store, f'{field}.npy'), array)


@pytest.mark.parametrize('network', ['selection', 'evaluation'])
@pytest.mark.parametrize('field,value', [
    ('features', np.nan), ('probs', np.inf), ('ce', np.nan), ('entropy', -np.inf),
    ('maxprob', np.nan)])
def test_probe6_non_finite_inputs_are_named_before_any_solve(run_copy, network, field,
                                                             value):
  config, workdir = run_copy
  _poison(workdir, network, field, 3, 7, value)
  config.select.name = 'probe6'
  with pytest.raises(ValueError,
                     match=rf'non-finite {field} in .*{network}-train: class 3, row 7 '
                           r'\(id digits-\d+\)'):
    jobs.run('select', config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'selections', 'probe6'))


def test_probe6_non_finite_difficulty_is_found():
  rng = np.random.default_rng(0)
  difficulty = np.zeros(5, np.float32)
  difficulty[4] = np.nan
  problem = problem_lib.make_problem(
      rng.standard_normal((5, 3)), np.full((5, 2), 0.5), np.ones(5), np.ones(5),
      np.full(5, 0.5), difficulty=difficulty)
  assert problem_lib.first_non_finite(problem) == ('difficulty', 4)
  assert problem_lib.first_non_finite(problem._replace(difficulty=np.zeros(5))) is None


def _image_folder(root, classes) -> None:
  for name, count in classes:
    os.makedirs(root / name)
    for i in range(count):
      Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(root / name / f'{i}.bmp')


def _folder_cfg(root):
  cfg = defaults.data()
  cfg.name, cfg.folder, cfg.image_size = 'folder', str(root), 6
  return cfg


@pytest.mark.parametrize('empty', ['b_middle', 'z_last'])
def test_probe6_empty_class_folder_is_named(tmp_path, empty):
  _image_folder(tmp_path, [('a', 2), ('c', 2), (empty, 0)])
  (tmp_path / empty / 'notes.txt').write_text('no image')
  with pytest.raises(ValueError, match=f'class folder {tmp_path / empty} has no image'):
    input_pipeline.split_info(_folder_cfg(tmp_path), 'train')


def test_probe6_folder_split_hint(tmp_path):
  _image_folder(tmp_path, [('a', 1)])
  with pytest.raises(ValueError, match=r"unknown split 'test'.*"
                     r'--config\.classifier\.eval_split=train'):
    input_pipeline.split_info(_folder_cfg(tmp_path), 'test')


def test_probe5b_folder_version_covers_pixels(tmp_path):
  _image_folder(tmp_path, [('a', 2), ('b', 2)])
  cfg = _folder_cfg(tmp_path)
  version = input_pipeline.split_info(cfg, 'train').version
  assert input_pipeline.split_info(cfg, 'train').version == version
  path = tmp_path / 'b' / '1.bmp'
  size = os.path.getsize(path)
  time.sleep(0.02)  # past the file system clock's tick, as any real rewrite is.
  Image.fromarray(np.full((6, 6, 3), 200, np.uint8)).save(path)  # new pixels, same name.
  assert os.path.getsize(path) == size
  assert input_pipeline.split_info(cfg, 'train').version != version


def test_probe7_far_cost_scale_warns_with_its_number(run_copy, caplog):
  config, workdir = run_copy
  recorded = artifacts.read_json(os.path.join(workdir, SELECTION, 'selection.json'))
  # Unscaled: the finished run's numbers give no warning.
  assert objective.epsilon_scale_warning(
      dict(enumerate(recorded['cost_over_epsilon'])), config.select.gadc) is None
  store = os.path.join(workdir, 'features', 'selection-train', 'features.npy')
  np.save(store, np.load(store) * 1e3)
  # Random, with the finished run's budget and options: its scoring solves are compiled.
  config.select.method, config.select.eval_networks = 'random', ()
  with caplog.at_level(logging.WARNING):
    summary = jobs.run('select', config, workdir)
  ratios = summary['cost_over_epsilon']
  np.testing.assert_allclose(ratios, np.array(recorded['cost_over_epsilon']) * 1e6,
                             rtol=1e-3)
  warnings = [r.getMessage() for r in caplog.records
              if 'median cost / epsilon' in r.getMessage()]
  assert warnings and 'select.gadc.epsilon_rel' in warnings[0]
  assert f'class 0: {ratios[0]:.3g}' in warnings[0]


def test_probe7_relative_epsilon_is_not_warned():
  cfg = defaults.gadc()
  features = 1e3 * np.random.default_rng(0).standard_normal((40, 8))
  ratio = objective.cost_over_epsilon(features, cfg)
  assert objective.epsilon_scale_warning({0: ratio}, cfg) is not None
  cfg.epsilon_rel = 0.05
  ratio = objective.cost_over_epsilon(features, cfg)
  assert 1 < ratio < 100  # median over 0.05 x mean: about 20 at any scale.
  assert objective.epsilon_scale_warning({0: ratio}, cfg) is None
