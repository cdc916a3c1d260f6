"""Fault injection on the classifiers and features of a finished run (probes 2, 3, 5a, 6, 7
of issue 14): damaged stores, bad counts, changed inputs, failed first tries, two runs at
once, read-only folders and file permissions."""

import contextlib
import os
import re
import shutil
import stat
import subprocess

import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import feature_store
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax.jobs import features
from gadc_jax.jobs import train_classifier
from gadc_jax.training import classifier
from tests.conftest import killed_after
from tests.faults.conftest import main, one_error_line, snapshot

FIELDS = ('features', 'probs', 'ce', 'entropy', 'maxprob', 'labels', 'positions', 'ids')


def _store_dir(workdir, network='selection'):
  return layout.features_dir(workdir, network, 'train')


def _partition(found, folder):
  """(the entries of a snapshot under `folder`, a path relative to the workdir; the others)."""
  under = {k: v for k, v in found.items() if k.startswith(folder + os.sep)}
  return under, {k: v for k, v in found.items() if k not in under}


def _damage(path, how):
  """Cuts the file short, or rewrites its last bytes in place (same size, other content)."""
  with open(path, 'r+b') as f:
    if how == 'truncated':
      f.truncate(os.path.getsize(path) // 2)
    else:
      f.seek(-16, os.SEEK_END)
      f.write(np.arange(4, dtype=np.float32).tobytes())


def _classifier_json(workdir, name='selection'):
  return os.path.join(layout.classifier_dir(workdir, name), 'classifier.json')


def _edit_classifier_record(workdir, edit, name='selection'):
  """Rewrites classifier.json of network `name` through `edit(record)`: a classifier that
  looks trained from other inputs."""
  record = artifacts.read_json(_classifier_json(workdir, name))
  edit(record)
  artifacts.atomic_write_json(_classifier_json(workdir, name), record)


# Probe 2: a damaged store is found by readers and recomputed by the features job.


def test_2_truncated_store_fails_readers_with_one_error_naming_the_file(run_copy):
  config, workdir = run_copy
  path = os.path.join(_store_dir(workdir), 'features.npy')
  _damage(path, 'truncated')
  with pytest.raises(ValueError, match=f'{re.escape(path)} has .* bytes, not the .* written'):
    feature_store.open_store(config, workdir, 'selection', 'train')
  with pytest.raises(ValueError, match=f'{re.escape(path)} has .* bytes'):
    jobs.run('select', config, workdir)


@pytest.mark.parametrize('how', ['truncated', 'modified'])
def test_2_rerun_recomputes_the_damaged_store_alone(finished_run, run_copy, how):
  config, workdir = run_copy
  out = _store_dir(workdir)
  _damage(os.path.join(out, 'features.npy'), how)
  before = snapshot(workdir)
  jobs.run('features', config, workdir)
  (store_before, rest_before), (store_after, rest_after) = (
      _partition(found, 'features/selection-train') for found in (before, snapshot(workdir)))
  assert rest_after == rest_before  # the other store and the classifiers are untouched.
  assert store_after != store_before
  assert not os.path.exists(os.path.join(out, 'shards'))
  redone = feature_store.open_store(config, workdir, 'selection', 'train')
  original = feature_store.FeatureStore(_store_dir(finished_run[1]))
  for field in FIELDS:
    np.testing.assert_array_equal(redone.load(field), original.load(field), err_msg=field)


# Probe 3: bad counts and rates are refused before any work, one line each.


@pytest.mark.parametrize('job, key, value', [
    ('train_classifier', 'classifier.steps', -1),
    ('train_classifier', 'classifier.steps', 0),
    ('train_classifier', 'classifier.batch_size', 0),
    ('train_classifier', 'classifier.log_every', 0),
    ('train_classifier', 'classifier.checkpoint_every', -2),
    ('train_classifier', 'classifier.learning_rate', 0.0),
    ('train_classifier', 'classifier.learning_rate', float('nan')),
    ('train_classifier', 'classifier.weight_decay', -1e-4),
    ('train_classifier', 'classifier.networks', ('selection', 'nope')),
    ('train_classifier', 'classifier.eval_split', 'validation'),
    ('train_classifier', 'classifier.train_split', 'nope'),
    ('features', 'features.batch_size', 0),
    ('features', 'features.shard_size', -1),
    ('features', 'features.probs_topk', -1),
    ('features', 'features.networks', ('selection', 'nope')),
    ('features', 'features.splits', ('train', 'nope')),
])
def test_3_bad_config_is_refused_before_any_work(finished_run, tmp_path, job, key, value):
  config = finished_run[0].copy_and_resolve_references()
  section, name = key.split('.')
  config[section][name] = value
  workdir = str(tmp_path / 'w')
  with pytest.raises(ValueError, match=f'config.{key}') as e:
    jobs.run(job, config, workdir)
  assert '\n' not in str(e.value)
  assert os.listdir(workdir) == []


# Probe 5a: every input of a classifier or a store is in its fingerprint.


def test_5a_wider_network_refuses_the_classifier_trained_narrower(run_copy):
  config, workdir = run_copy
  config.networks.selection.width = 64
  before = snapshot(workdir)
  for job in ('features', 'select'):
    with pytest.raises(ValueError, match="network 'selection'.*width.*32.*64.*train_classifier"):
      jobs.run(job, config, workdir)
  assert snapshot(workdir) == before


def _wider_network(config, workdir):
  config.networks.selection.width = 64
  _edit_classifier_record(workdir, lambda r: r['inputs']['network'].update(width=64))


def _other_topk(config, workdir):
  del workdir
  config.features.probs_topk = 3


def _other_checkpoint(config, workdir):
  del config
  _edit_classifier_record(workdir, lambda r: r.update(params_fingerprint='0' * 16))


@pytest.mark.parametrize('change', [_wider_network, _other_topk, _other_checkpoint])
def test_5a_features_refuse_a_store_of_other_inputs(run_copy, change):
  config, workdir = run_copy
  change(config, workdir)
  before = snapshot(workdir)
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    jobs.run('features', config, workdir)
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    feature_store.open_store(config, workdir, 'selection', 'train')
  assert snapshot(workdir) == before


@pytest.mark.parametrize('key, value', [
    ('classifier.steps', 21), ('classifier.batch_size', 64),
    ('classifier.learning_rate', 1e-3), ('classifier.weight_decay', 0.0),
    ('classifier.train_split', 'test'), ('classifier.eval_split', 'train'),
    ('networks.selection.seed', 5), ('networks.selection.width', 64),
])
def test_5a_train_classifier_refuses_other_training_inputs(run_copy, key, value):
  config, workdir = run_copy
  section, *path = key.split('.')
  node = config[section]
  for name in path[:-1]:
    node = node[name]
  node[path[-1]] = value
  before = snapshot(workdir)
  with pytest.raises(ValueError, match='classifier fingerprint mismatch'):
    jobs.run('train_classifier', config, workdir)
  assert snapshot(workdir) == before


def test_5a_options_that_change_no_params_keep_the_classifiers(run_copy):
  config, workdir = run_copy
  config.classifier.log_every = 7
  config.classifier.checkpoint_every = 3
  config.classifier.networks = ('evaluation',)
  before = snapshot(workdir)
  jobs.run('train_classifier', config, workdir)
  assert snapshot(workdir) == before


# Probe 6: a first try that failed before any work does not bind the folder to its inputs.


def test_6_finished_or_start_starts_afresh_when_nothing_was_done(tmp_path):
  started = str(tmp_path / 'parts' / 'inputs.json')
  done = str(tmp_path / 'done.json')
  assert artifacts.finished_or_start(done, started, 'a', {'x': 1}, 'thing') is None
  open(tmp_path / 'parts' / '.tmp-cut-short', 'w').close()  # not work: a write cut short.
  assert artifacts.finished_or_start(done, started, 'b', {'x': 2}, 'thing') is None
  assert artifacts.read_json(started) == {'fingerprint': 'b', 'inputs': {'x': 2}}
  open(tmp_path / 'parts' / 'part-0.npz', 'w').close()
  with pytest.raises(ValueError, match='thing fingerprint mismatch'):
    artifacts.finished_or_start(done, started, 'a', {'x': 1}, 'thing')


def test_6_classifier_failed_before_its_first_checkpoint_starts_afresh(finished_run, tmp_path,
                                                                      monkeypatch):
  config = finished_run[0].copy_and_resolve_references()
  config.classifier.networks = ('evaluation',)
  config.classifier.steps = 4
  config.classifier.checkpoint_every = 2
  workdir = str(tmp_path)
  real = classifier.train_step
  monkeypatch.setattr(classifier, 'train_step', killed_after(real, 1))
  with pytest.raises(KeyboardInterrupt):
    jobs.run('train_classifier', config, workdir)
  config.classifier.learning_rate = 1e-3
  monkeypatch.setattr(classifier, 'train_step', killed_after(real, 3))
  with pytest.raises(KeyboardInterrupt):  # fresh start: the step-2 checkpoint is work.
    jobs.run('train_classifier', config, workdir)
  config.classifier.learning_rate = 2e-3
  with pytest.raises(ValueError, match='classifier fingerprint mismatch'):
    jobs.run('train_classifier', config, workdir)
  config.classifier.learning_rate = 1e-3
  monkeypatch.setattr(classifier, 'train_step', real)
  record = train_classifier.train_network(config, workdir, 'evaluation')
  assert record['inputs']['training']['learning_rate'] == 1e-3


def test_6_features_failed_before_the_first_shard_start_afresh(finished_run, tmp_path,
                                                               monkeypatch):
  config = finished_run[0].copy_and_resolve_references()
  config.features.networks = ('evaluation',)
  config.features.shard_size = 500
  workdir = str(tmp_path)
  os.symlink(os.path.join(finished_run[1], 'classifiers'), os.path.join(workdir, 'classifiers'))
  real = features._compute_shard
  monkeypatch.setattr(features, '_compute_shard', killed_after(real, 0))
  with pytest.raises(KeyboardInterrupt):
    jobs.run('features', config, workdir)
  config.features.probs_topk = 3
  monkeypatch.setattr(features, '_compute_shard', killed_after(real, 1))
  with pytest.raises(KeyboardInterrupt):
    jobs.run('features', config, workdir)
  config.features.probs_topk = 2
  with pytest.raises(ValueError, match='features fingerprint mismatch'):
    jobs.run('features', config, workdir)
  config.features.probs_topk = 3
  monkeypatch.setattr(features, '_compute_shard', real)
  jobs.run('features', config, workdir)
  store = feature_store.open_store(config, workdir, 'evaluation', 'train')
  assert store.manifest['probs_topk'] == 3


# Probe 7: two runs on one folder, a read-only folder, file permissions.


_FOLDER = {'features': _store_dir,
           'train_classifier': lambda workdir: layout.classifier_dir(workdir, 'selection')}


@pytest.mark.parametrize('job', sorted(_FOLDER))
def test_7_second_run_on_a_folder_being_written_refuses(run_copy, job):
  config, workdir = run_copy
  out = _FOLDER[job](workdir)
  shutil.rmtree(out)
  with artifacts.exclusive(out):  # the first run, still working.
    with pytest.raises(BlockingIOError, match=f'{re.escape(out)} is being written by another'):
      jobs.run(job, config, workdir)
  assert os.listdir(out) == ['.lock']


@contextlib.contextmanager
def _read_only(folder):
  """`folder` made read-only for the block: by its mode, or (root ignores modes) immutable."""
  if os.geteuid() != 0:
    os.chmod(folder, 0o555)
    try:
      yield
    finally:
      os.chmod(folder, 0o755)
    return
  if subprocess.run(['chattr', '+i', folder], capture_output=True).returncode:
    pytest.skip('root, and chattr +i does not work on this filesystem')
  try:
    yield
  finally:
    subprocess.run(['chattr', '-i', folder], check=True)


def test_7_read_only_folder_is_one_line(run_copy, tfds_dir):
  _, workdir = run_copy
  shutil.rmtree(_store_dir(workdir))
  with _read_only(os.path.join(workdir, 'features')):
    result = main(workdir, tfds_dir, '--config.job=features')
  assert result.returncode == 2
  assert _store_dir(workdir) in one_error_line(result)


def test_7_artifacts_get_the_umask_permissions(finished_run):
  mask = os.umask(0)
  os.umask(mask)
  workdir = finished_run[1]
  paths = [_classifier_json(workdir), os.path.join(_store_dir(workdir), 'manifest.json')]
  paths += [os.path.join(_store_dir(workdir), f'{field}.npy') for field in FIELDS]
  for path in paths:
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, path
