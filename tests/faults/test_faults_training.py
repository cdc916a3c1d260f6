"""Fault injection on the train, sample and evaluate jobs of a finished smoke pipeline.

Probe 2: a finished run is one whose files are whole: a missing or damaged final checkpoint
is redone from the latest whole one, damaged samples are rebuilt from their parts (a damaged
part sampled again), and the evaluate job refuses samples that differ from samples.json.
Probe 3: bad config values end before any work, one line each; probe 7: a SiT with the
default (DiT) sampler fails before training. Probe 4: SIGTERM in the sample and evaluate
stages stops the pipeline there (exit 143) and the same command resumes. Probe 5 (locks):
a second run on a folder a job is writing refuses.
"""

import glob
import math
import os
import shutil
import sys
import types

import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import generator
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax.training import train_state
from tests.faults.conftest import main
from tests.faults.conftest import one_error_line
from tests.faults.conftest import snapshot
from tests.test_preemption import sigterm_once


def _changed(before: dict, after: dict) -> set[str]:
  """Files written, rewritten or removed between two snapshots."""
  return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def _truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _counted(fn, count: dict):
  """fn, adding its calls to count['n']."""

  def counted(*args, **kwargs):
    count['n'] += 1
    return fn(*args, **kwargs)

  return counted


def _final_checkpoint_file(train_dir: str, step: int) -> str:
  """The largest file of checkpoint `step` (array data)."""
  files = glob.glob(os.path.join(train_dir, 'checkpoints', str(step), '**', '*'),
                    recursive=True)
  return max((f for f in files if os.path.isfile(f)), key=os.path.getsize)


# ---------------------------------------------------------------------------------------------
# Probe 2: finished means whole.


@pytest.mark.parametrize('damage', ['missing', 'truncated'])
def test_probe2_train_redoes_the_steps_of_a_missing_or_damaged_final_checkpoint(
    run_copy, monkeypatch, damage):
  config, workdir = run_copy
  out = layout.train_dir(workdir, config)
  record = artifacts.read_json(os.path.join(out, 'train.json'))
  final = os.path.join(out, 'checkpoints', str(config.train.steps))
  if damage == 'missing':
    shutil.rmtree(final)
  else:
    _truncate(_final_checkpoint_file(out, config.train.steps))
  before = snapshot(workdir)
  steps, make_train_step = {'n': 0}, train_state.make_train_step
  monkeypatch.setattr(train_state, 'make_train_step',
                      lambda *a, **k: _counted(make_train_step(*a, **k), steps))
  redone = jobs.run('train', config, workdir)

  # From checkpoint 2 (checkpoint_every 2): exactly steps 3 and 4, to the same EMA.
  assert steps['n'] == config.train.steps - config.train.checkpoint_every
  assert redone['ema_fingerprint'] == record['ema_fingerprint']
  assert artifacts.read_json(os.path.join(out, 'train.json')) == redone
  # Written: the final checkpoint, train.json, the final grid and a new metrics file.
  rel = os.path.relpath(out, workdir)
  redone_files = (os.path.join(rel, 'checkpoints', str(config.train.steps), ''),
                  os.path.join(rel, 'train.json'),
                  os.path.join(rel, f'grid-{config.train.steps:07d}.png'),
                  os.path.join(rel, 'events.out.tfevents.'))
  for path in _changed(before, snapshot(workdir)):
    assert path.startswith(redone_files), path
  # Now whole: the sample job reads it.
  generator.restore_ema_params(config, workdir, 10, (8, 8, 1))


def test_probe2_sample_names_the_missing_train_checkpoint(run_copy):
  config, workdir = run_copy
  out = layout.train_dir(workdir, config)
  shutil.rmtree(layout.samples_dir(workdir, config))  # so that the job must sample.
  _truncate(_final_checkpoint_file(out, config.train.steps))
  with pytest.raises(ValueError, match=r'the train run .* is not whole: checkpoint .*/4 is '
                     r'damaged: .* has \d+ bytes, not the \d+ written; run the train job again'):
    jobs.run('sample', config, workdir)
  shutil.rmtree(os.path.join(out, 'checkpoints', str(config.train.steps)))
  with pytest.raises(FileNotFoundError, match=r'the train run .* is not whole: checkpoint '
                     r'.*/4 is missing; run the train job again'):
    jobs.run('sample', config, workdir)


def test_probe2_damaged_samples_are_refused_by_evaluate_and_rebuilt_from_the_parts(
    run_copy, monkeypatch):
  config, workdir = run_copy
  path = layout.samples_file(workdir, config)
  with np.load(path) as z:
    images = z['images']
  eval_record = artifacts.read_json(layout.eval_path(workdir, layout.eval_name(config)))
  _truncate(path)
  with pytest.raises(ValueError, match=r'samples.npz has \d+ bytes, not the \d+ written'):
    jobs.run('evaluate', config, workdir)

  before = snapshot(workdir)
  monkeypatch.setattr(generator, 'generate', None)  # nothing is sampled again.
  jobs.run('sample', config, workdir)
  with np.load(path) as z:
    np.testing.assert_array_equal(z['images'], images)
  rel = os.path.relpath(layout.samples_dir(workdir, config), workdir)
  assert _changed(before, snapshot(workdir)) <= {
      os.path.join(rel, name) for name in ('samples.npz', 'samples.json', 'grid.png')}
  # The same samples: the evaluation stands.
  assert jobs.run('evaluate', config, workdir) == eval_record


def test_probe2_a_damaged_part_alone_is_sampled_again(run_copy, monkeypatch):
  config, workdir = run_copy
  folder = layout.samples_dir(workdir, config)
  with np.load(layout.samples_file(workdir, config)) as z:
    images = z['images']
  _truncate(os.path.join(folder, 'parts', 'part-00001.npz'))
  before = snapshot(workdir)
  calls = {'n': 0}
  monkeypatch.setattr(generator, 'generate', _counted(generator.generate, calls))
  jobs.run('sample', config, workdir)
  assert calls['n'] == 1
  with np.load(layout.samples_file(workdir, config)) as z:
    np.testing.assert_array_equal(z['images'], images)
  rel = os.path.relpath(folder, workdir)
  assert _changed(before, snapshot(workdir)) <= {
      os.path.join(rel, name) for name in
      ('parts/part-00001.npz', 'samples.npz', 'samples.json', 'grid.png')}


# ---------------------------------------------------------------------------------------------
# Probe 3 (and 7): bad config values end before any work, one line each.

_BAD = [
    ('train', {'train.steps': -5}, r'config.train.steps must be a positive integer, got -5'),
    ('train', {'train.batch_size': 0}, r'config.train.batch_size must be a positive integer'),
    ('train', {'train.log_every': 0}, r'config.train.log_every must be a positive integer'),
    ('train', {'train.checkpoint_every': 0}, r'checkpoint_every must be a positive integer'),
    ('train', {'train.grid_per_class': 0}, r'grid_per_class must be a positive integer'),
    ('train', {'train.sample_every': -1}, r'sample_every must be an integer >= 0'),
    ('train', {'train.learning_rate': math.nan}, r'learning_rate must be a finite number > 0'),
    ('train', {'train.weight_decay': -0.1}, r'weight_decay must be a finite number >= 0'),
    ('train', {'train.ema_decay': 1.5}, r'ema_decay must be a number in \[0, 1\]'),
    ('train', {'train.class_dropout': -0.1}, r'class_dropout must be a number in \[0, 1\]'),
    ('train', {'train.fsdp': 3}, r'fsdp=3 does not divide the 1 devices'),
    ('train', {'train.space': 'voxel'}, r'config.train.space must be one of pixel, latent'),
    ('train', {'train.sampler.steps': 0}, r'config.train.sampler.steps must be a positive'),
    ('train', {'train.sampler.steps': 2000}, r'sampler.steps must be at most the 1000 steps'),
    ('train', {'train.sampler.cfg_scale': -1.0}, r'cfg_scale must be a finite number >= 0'),
    ('train', {'train.keep_every': -1}, r'config.train.keep_every must be an integer >= 0'),
    ('train', {'train.keep_every': 3}, r'keep_every \(3\) must be a multiple of '
                                       r'config.train.checkpoint_every \(2\)'),
    ('train', {'train.sampler.guided_channels': 2},
     r'config.train.sampler.guided_channels is 2 but the model space has only 1 channels'),
    # Probe 7: a SiT with the default (DDPM) sampler, before any training.
    ('train', {'train.model': 'SiT-S/2'},
     r"config.train.sampler.method 'ddpm' does not fit a SiT \(SiT-S/2\); use one of ode"),
    ('train', {'train.model': 'SiT-S/2', 'train.sampler.method': 'ode',
               'train.transport_path': 'curved'}, r"unknown path 'curved'"),
    ('sample', {'sample.num_samples': 0}, r'config.sample.num_samples must be a positive'),
    ('sample', {'sample.batch_size': -1}, r'config.sample.batch_size must be a positive'),
    ('sample', {'sample.sampler.method': 'ode'},
     r"config.sample.sampler.method 'ode' does not fit a DiT"),
    ('evaluate', {'evaluate.batch_size': 0}, r'config.evaluate.batch_size must be a positive'),
    ('evaluate', {'evaluate.k': 0}, r'config.evaluate.k must be a positive integer'),
    ('evaluate', {'evaluate.is_splits': 0}, r'config.evaluate.is_splits must be a positive'),
    ('evaluate', {'evaluate.metrics': ('fid', 'fvd')}, r'config.evaluate.metrics: unknown fvd'),
    ('evaluate', {'evaluate.kid_subset_size': 1},
     r'config.evaluate.kid_subset_size must be an integer >= 2'),
    ('evaluate', {'evaluate.kid_subsets': 0}, r'config.evaluate.kid_subsets must be a positive'),
    ('evaluate', {'evaluate.networks': ('nope',)}, r'config.evaluate.networks: nope not in'),
]


def _set(config, overrides: dict) -> None:
  """config[KEY] = VALUE for each dotted KEY of `overrides`, as --config.KEY=VALUE does."""
  for key, value in overrides.items():
    node, (*path, name) = config, key.split('.')
    for part in path:
      node = node[part]
    node[name] = value


@pytest.mark.parametrize('job,overrides,message', _BAD, ids=[
    f'{job}-' + ','.join(f'{k}={v}' for k, v in overrides.items())
    for job, overrides, _ in _BAD])
def test_probe3_bad_values_fail_before_any_work(run_copy, job, overrides, message):
  """Refused even where the job's output is finished, and nothing is written."""
  config, workdir = run_copy
  _set(config, overrides)
  before = snapshot(workdir)
  with pytest.raises(ValueError, match=message):
    jobs.run(job, config, workdir)
  assert snapshot(workdir) == before


def test_probe3_a_bad_value_is_one_line_and_exit_2(run_copy, tfds_dir):
  _, workdir = run_copy
  before = snapshot(workdir)
  result = main(workdir, tfds_dir, '--config.job=train', '--config.train.steps=-5')
  assert result.returncode == 2, result.stderr[-3000:]
  assert one_error_line(result) == 'error: config.train.steps must be a positive integer, got -5'
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------
# Probe 4: SIGTERM in the sample and the evaluate stage of a pipeline.


def test_probe4_sigterm_stops_the_pipeline_in_sample_and_evaluate_and_it_resumes(
    run_copy, tfds_dir):
  config, workdir = run_copy
  for folder in ('samples', 'eval', 'eval_cache'):
    shutil.rmtree(os.path.join(workdir, folder))
  # Many small batches, so that SIGTERM comes in the middle of each stage.
  overrides = {'sample.num_samples': 200, 'sample.batch_size': 10, 'evaluate.batch_size': 16}
  command = [sys.executable, 'main.py', '--config=configs/digits.py:smoke=True',
             f'--workdir={workdir}', f'--config.data.data_dir={tfds_dir}',
             *(f'--config.{k}={v}' for k, v in overrides.items())]
  _set(config, overrides)
  folder = layout.samples_dir(workdir, config)

  status, _, stderr, signalled = sigterm_once(command, 'job sample in')
  assert signalled and status == preemption.EXIT_STATUS, stderr[-3000:]
  line = one_error_line(types.SimpleNamespace(stderr=stderr), 'stopped: ')
  assert 'of 20 of the sample job' in line, line
  parts = snapshot(os.path.join(folder, 'parts'))
  assert 1 <= len([name for name in parts if name.startswith('part-')]) < 20
  assert not os.path.exists(os.path.join(folder, 'samples.json'))

  status, _, stderr, signalled = sigterm_once(command, 'job evaluate in')
  assert signalled and status == preemption.EXIT_STATUS, stderr[-3000:]
  line = one_error_line(types.SimpleNamespace(stderr=stderr), 'stopped: ')
  assert 'in the evaluate job' in line, line
  # The sample job resumed: the parts of the first try are kept as they were.
  after = snapshot(os.path.join(folder, 'parts'))
  assert all(after[name] == parts[name] for name in parts)
  assert len(artifacts.read_json(os.path.join(folder, 'samples.json'))['files']) == 21
  assert not os.path.exists(layout.eval_path(workdir, layout.eval_name(config)))
  assert os.listdir(os.path.join(workdir, 'eval_cache'))  # the reference, kept.

  jobs.run('pipeline', config, workdir)
  assert os.path.exists(layout.eval_path(workdir, layout.eval_name(config)))


# ---------------------------------------------------------------------------------------------
# Probe 5 (locks): a second run on a folder that a job is writing refuses.


@pytest.mark.parametrize('job', ['train', 'sample', 'evaluate'])
def test_probe5_a_second_run_on_a_folder_being_written_refuses(run_copy, job):
  config, workdir = run_copy
  folder = {'train': layout.train_dir(workdir, config),
            'sample': layout.samples_dir(workdir, config),
            'evaluate': os.path.join(workdir, 'eval', layout.eval_name(config))}[job]
  before = snapshot(workdir)
  with artifacts.exclusive(folder):
    with pytest.raises(BlockingIOError, match=f'{folder} is being written by another run'):
      jobs.run(job, config, workdir)
  assert snapshot(workdir) == before
