"""The select job on the digits stores: outputs, resume, refusals, clear errors."""

import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import feature_store
from gadc_jax.jobs import features as features_job
from gadc_jax.jobs import select as select_job
from gadc_jax.selection import budget
from tests.conftest import REPO
from tests.conftest import killed_after


def test_per_class_budget_forms():
  sizes = np.array([10, 30, 20, 30])
  np.testing.assert_array_equal(budget.per_class_budget('5/class', sizes), [5, 5, 5, 5])
  # 10 over 4 classes: 2 each, the remainder 2 to the largest classes (ties: lower index).
  np.testing.assert_array_equal(budget.per_class_budget('10', sizes), [2, 3, 2, 3])
  # 10% of 90 images = 9: 2 each, one more for class 1.
  np.testing.assert_array_equal(budget.per_class_budget('10%', sizes), [2, 3, 2, 2])
  with pytest.raises(ValueError, match="'ten'"):
    budget.per_class_budget('ten', sizes)
  for bad in ('inf%', 'nan%', 'nan', '-5', '0', '0/class', '2.5/class', '-1%'):
    with pytest.raises(ValueError, match=f"select.budget '{re.escape(bad)}' is not a positive"):
      budget.parse(bad)


def _workdir_with_links(digits_workdir, tmp_path):
  """A fresh workdir sharing the (read-only here) classifiers and features."""
  config, workdir = digits_workdir
  for sub in ('classifiers', 'features'):
    os.symlink(os.path.join(workdir, sub), tmp_path / sub)
  return config.copy_and_resolve_references(), str(tmp_path)


def _selection(workdir, name):
  out = os.path.join(workdir, 'selections', name)
  with np.load(os.path.join(out, 'selection.npz')) as z:
    arrays = {k: z[k] for k in z.files}
  return out, arrays, artifacts.read_json(os.path.join(out, 'selection.json'))


@pytest.mark.parametrize('method', ['gadc', 'herding'])
def test_select_writes_a_checked_selection(digits_workdir, tmp_path, method):
  config, workdir = _workdir_with_links(digits_workdir, tmp_path)
  config.select.method = method
  config.select.budget = '5/class'
  summary = select_job.run(config, workdir)
  out, sel, js = _selection(workdir, f'{method}-5perclass-seed0')
  assert summary['fingerprint'] == js['fingerprint']
  store = feature_store.open_store(config, workdir, 'selection', 'train')
  np.testing.assert_array_equal(sel['offsets'], np.arange(0, 55, 5))
  for c in range(10):
    idx = sel['indices'][sel['offsets'][c]:sel['offsets'][c + 1]]
    assert len(set(idx.tolist())) == 5
    np.testing.assert_array_equal(sel['ids'][5 * c:5 * c + 5], store.load('ids', c)[idx])
    np.testing.assert_array_equal(sel['positions'][5 * c:5 * c + 5],
                                  store.load('positions', c)[idx])
  assert set(js['diagnostics']) == {'selection', 'evaluation'}
  for space in js['diagnostics'].values():
    assert {'w2', 'pot_relative_eps', 'mmd', 'coverage', 'ce'} <= set(space)
    assert all(np.isfinite(v) for v in space.values())
  # J's own POT term is reported in the space J is defined in.
  assert 'pot_objective_eps' in js['diagnostics']['selection']
  assert 'pot_objective_eps' not in js['diagnostics']['evaluation']
  assert len(js['objective']) == 10 and all(np.isfinite(js['objective']))
  assert os.path.getsize(os.path.join(out, 'grid.png')) > 100
  # Run again: finished, skipped, nothing rewritten.
  mtime = os.path.getmtime(os.path.join(out, 'selection.json'))
  select_job.run(config, workdir)
  assert os.path.getmtime(os.path.join(out, 'selection.json')) == mtime
  # Same folder, other inputs: refused, nothing overwritten.
  config.select.gadc.w_ce = 123.0  # the objective every selection is scored with.
  with pytest.raises(ValueError, match='selection fingerprint mismatch'):
    select_job.run(config, workdir)
  assert os.path.getmtime(os.path.join(out, 'selection.json')) == mtime


def test_gadc_beats_random_on_its_objective(digits_workdir, tmp_path):
  config, workdir = _workdir_with_links(digits_workdir, tmp_path)
  config.select.budget = '5/class'
  results = {}
  for method in ('gadc', 'random'):
    config.select.method = method
    results[method] = select_job.run(config, workdir)
  assert np.all(np.array(results['gadc']['objective'])
                < np.array(results['random']['objective']))


_SELECT_IN_CHILD = """
import pickle, sys
sys.path.insert(0, {repo!r})
from absl import logging
from gadc_jax.jobs import select
logging.set_verbosity(logging.INFO)
with open({config!r}, 'rb') as f:
  select.run(pickle.load(f), {workdir!r})
"""


def test_gadc_splits_classes_over_local_devices(digits_workdir, tmp_path):
  """On a host with 2 devices GADC shards each batch of classes over both (3 classes a batch,
  so one is padding) and selects exactly what one device selects."""
  for sub in ('one', 'two'):
    (tmp_path / sub).mkdir()
  config, one_device = _workdir_with_links(digits_workdir, tmp_path / 'one')
  config.select.budget = '5/class'
  config.select.classes_per_batch = 3
  select_job.run(config, one_device)
  _, two_devices = _workdir_with_links(digits_workdir, tmp_path / 'two')
  with open(tmp_path / 'config.pkl', 'wb') as f:
    pickle.dump(config, f)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  code = _SELECT_IN_CHILD.format(repo=REPO, config=str(tmp_path / 'config.pkl'),
                                 workdir=two_devices)
  child = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=900)
  assert child.returncode == 0, child.stderr[-3000:]
  assert 'classes split over 2 local devices' in child.stderr
  _, want, _ = _selection(one_device, 'gadc-5perclass-seed0')
  _, got, _ = _selection(two_devices, 'gadc-5perclass-seed0')
  for k in ('indices', 'ids', 'offsets'):
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_killed_then_resumed_equals_uninterrupted(digits_workdir, tmp_path, monkeypatch):
  config, workdir = _workdir_with_links(digits_workdir, tmp_path)
  config.select.method = 'kcenter'
  config.select.budget = '3/class'
  config.select.classes_per_batch = 2
  select_job.run(config, workdir)
  _, reference, ref_js = _selection(workdir, 'kcenter-3perclass-seed0')

  config.select.name = 'interrupted'
  real = select_job._score_class
  monkeypatch.setattr(select_job, '_score_class', killed_after(real, 5))
  with pytest.raises(KeyboardInterrupt):
    select_job.run(config, workdir)
  done = os.listdir(os.path.join(workdir, 'selections', 'interrupted', 'classes'))
  assert len([f for f in done if f.startswith('class-')]) == 5
  monkeypatch.setattr(select_job, '_score_class', real)
  select_job.run(config, workdir)
  _, resumed, res_js = _selection(workdir, 'interrupted')
  for k in reference:
    np.testing.assert_array_equal(resumed[k], reference[k])
  assert res_js['objective'] == ref_js['objective']


def test_budget_larger_than_a_class(digits_workdir, tmp_path):
  config, workdir = _workdir_with_links(digits_workdir, tmp_path)
  config.select.budget = '1000/class'
  with pytest.raises(ValueError, match=r'asks 1000 images of class 0, which has only'):
    select_job.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'selections'))


@pytest.mark.slow
def test_an_evaluation_space_without_a_classifier_head(digits_workdir, tmp_path):
  """A DINOv2 encoder (random ViT-S weights saved as transformers writes them) as a further
  evaluation space: its store holds features only, the diagnostics there have no CE."""
  transformers = pytest.importorskip('transformers')
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  config, shared = digits_workdir
  config = config.copy_and_resolve_references()
  os.symlink(os.path.join(shared, 'classifiers'), tmp_path / 'classifiers')
  os.makedirs(tmp_path / 'features')
  for name in ('selection-train', 'evaluation-train'):
    os.symlink(os.path.join(shared, 'features', name), tmp_path / 'features' / name)
  hf_config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12,
                                        num_attention_heads=6, image_size=518, patch_size=14)
  weights = {k: v.detach().numpy().copy()
             for k, v in transformers.Dinov2Model(hf_config).state_dict().items()}
  checkpoint = str(tmp_path / 'dinov2.safetensors')
  safetensors_numpy.save_file(weights, checkpoint)
  config.networks.dino = {'arch': 'dinov2_s14', 'checkpoint': checkpoint, 'input_size': 14}
  store = features_job.compute_store(config, str(tmp_path), 'dino', 'train')
  assert not store.has_head and not os.path.exists(os.path.join(store.path, 'ce.npy'))
  config.select.method = 'kcenter'
  config.select.budget = '2/class'
  config.select.eval_networks = ('dino',)
  js = select_job.run(config, str(tmp_path))
  assert set(js['diagnostics']['dino']) == {'w2', 'pot_relative_eps', 'mmd', 'mean_gap',
                                            'var_gap', 'coverage'}
  assert all(np.isfinite(v) for v in js['diagnostics']['dino'].values())
  config.select.network = 'dino'
  config.select.eval_networks = ()
  with pytest.raises(ValueError, match="config.select.network 'dino' has no classifier head"):
    select_job.run(config, str(tmp_path))


def _copied_store(digits_workdir, tmp_path):
  """A workdir with its own copy of the selection store, to corrupt."""
  config, workdir = digits_workdir
  os.symlink(os.path.join(workdir, 'classifiers'), tmp_path / 'classifiers')
  for name in ('selection-train', 'evaluation-train'):
    shutil.copytree(os.path.join(workdir, 'features', name), tmp_path / 'features' / name)
  config = config.copy_and_resolve_references()
  config.select.budget = '2/class'
  config.select.method = 'random'
  return config, str(tmp_path), str(tmp_path / 'features' / 'selection-train')


def _shrink_class_0(workdir, rows):
  """Class 0 keeps its first `rows` images; class 1 takes the rest (in both stores)."""
  for name in ('selection-train', 'evaluation-train'):
    manifest_path = os.path.join(workdir, 'features', name, 'manifest.json')
    manifest = artifacts.read_json(manifest_path)
    manifest['offsets'][1] = manifest['offsets'][0] + rows
    artifacts.atomic_write_json(manifest_path, manifest)


@pytest.mark.slow
def test_small_class_taken_whole_and_proportional_budgets(digits_workdir, tmp_path):
  config, workdir, _ = _copied_store(digits_workdir, tmp_path)
  _shrink_class_0(workdir, 3)
  config.select.method = 'kcenter'
  config.select.budget = '5/class'
  with pytest.raises(ValueError, match=r"asks 5 images of class 0, which has only 3"):
    select_job.run(config, workdir)
  # take_all: class 0 gives its 3 images, the others 5 each (two batches of different m).
  config.select.small_classes = 'take_all'
  summary = select_job.run(config, workdir)
  assert summary['per_class'] == [3] + [5] * 9
  _, sel, _ = _selection(workdir, 'kcenter-5perclass-seed0')
  np.testing.assert_array_equal(sel['offsets'], np.r_[0, np.cumsum([3] + [5] * 9)])
  np.testing.assert_array_equal(np.sort(sel['indices'][:3]), [0, 1, 2])
  # Proportional: 2% of the split by class sizes, class 0 at least 1.
  config.select.allocation = 'proportional'
  config.select.budget = '2%'
  config.select.name = 'proportional'
  summary = select_job.run(config, workdir)
  sizes = feature_store.open_store(config, workdir, 'selection', 'train').class_sizes()
  expected = budget.per_class_budget('2%', sizes, 'proportional')
  assert summary['per_class'] == expected.tolist()
  assert expected[0] == 1 and expected[1] > expected[2]  # class 1 holds most of class 0.
  assert summary['num_selected'] == round(0.02 * sizes.sum())


def test_nan_features_name_class_and_row(digits_workdir, tmp_path):
  config, workdir, store_path = _copied_store(digits_workdir, tmp_path)
  feats = np.load(os.path.join(store_path, 'features.npy'))
  offsets = artifacts.read_json(os.path.join(store_path, 'manifest.json'))['offsets']
  feats[offsets[3] + 7, 2] = np.nan
  np.save(os.path.join(store_path, 'features.npy'), feats)
  with pytest.raises(ValueError, match=r'class 3, row 7 \(id digits-\d+\)'):
    select_job.run(config, workdir)


def test_empty_class(digits_workdir, tmp_path):
  config, workdir, _ = _copied_store(digits_workdir, tmp_path)
  for name in ('selection-train', 'evaluation-train'):
    manifest_path = os.path.join(workdir, 'features', name, 'manifest.json')
    manifest = artifacts.read_json(manifest_path)
    manifest['offsets'][5] = manifest['offsets'][4]  # class 4 now holds no rows.
    artifacts.atomic_write_json(manifest_path, manifest)
  with pytest.raises(ValueError, match='class 4 has no images'):
    select_job.run(config, workdir)


def test_features_of_another_split_are_refused(digits_workdir, tmp_path):
  config, workdir, store_path = _copied_store(digits_workdir, tmp_path)
  config.select.split = 'test'
  with pytest.raises(FileNotFoundError, match='run the features job'):
    select_job.run(config, workdir)
  # A train store put where the test store belongs does not pass for it.
  for name in ('selection', 'evaluation'):
    shutil.copytree(os.path.join(workdir, 'features', f'{name}-train'),
                    os.path.join(workdir, 'features', f'{name}-test'))
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    select_job.run(config, workdir)
