"""D2C's difficulty stage: the scores against the loss computed directly, resume, refusals,
and the digits pipeline running d2c on them."""

import os

import numpy as np
import pytest

from gadc_jax import difficulty
from gadc_jax import feature_store
from gadc_jax import generator
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax.data import input_pipeline
from gadc_jax.jobs import difficulty as difficulty_job
from gadc_jax.jobs import select as select_job
from tests.conftest import killed_after
from tests.test_difficulty_score import direct_scores

FIELDS = ('difficulty', 'labels', 'positions', 'ids')


def _linked_workdir(digits_workdir, path, subs=('classifiers', 'features')):
  """A fresh config and a workdir sharing the (read-only here) artifacts `subs`."""
  config, workdir = digits_workdir
  os.makedirs(path, exist_ok=True)
  for sub in subs:
    os.symlink(os.path.join(workdir, sub), os.path.join(path, sub))
  config = config.copy_and_resolve_references()
  # A tiny scorer: the digits DiT at depth 1, a few steps (its scores mean little; their
  # computation is what is tested).
  scorer = config.difficulty.scorer
  scorer.model_overrides.update({'depth': 1, 'hidden': 32, 'heads': 2})
  scorer.steps = scorer.checkpoint_every = 4
  scorer.grid_per_class = 1
  scorer.sampler.steps = 2
  config.difficulty.shard_size = 600  # 1437 train images: 3 shards.
  config.select.method = 'd2c'
  config.select.budget = '5/class'
  return config, str(path)


@pytest.fixture(scope='module')
def d2c_run(digits_workdir, tmp_path_factory):
  """(config, workdir) after the digits pipeline ran d2c: its difficulty stage (the scorer
  trained on the whole split, then the scores) and the selection; classifiers and features
  are the session's."""
  config, workdir = _linked_workdir(digits_workdir, tmp_path_factory.mktemp('d2c'))
  config.stages = ('train_classifier', 'features', 'difficulty', 'select')
  jobs.run('pipeline', config, workdir)
  return config, workdir


def _arrays(store):
  return {f: np.asarray(store.load(f)) for f in FIELDS}


@pytest.mark.slow  # the d2c_run fixture: a scorer trained, a split scored.
def test_scores_equal_the_denoising_loss_computed_directly(d2c_run):
  config, workdir = d2c_run
  store = feature_store.FeatureStore(difficulty.store_dir(config, workdir), 'difficulty')
  assert store.path == os.path.join(workdir, 'difficulty', 'DiT-S_2-train-train')
  features = feature_store.open_store(config, workdir, 'selection', 'train')
  arrays = _arrays(store)
  # Sorted like the feature store: the same ids, row by row.
  np.testing.assert_array_equal(arrays['ids'], np.asarray(features.load('ids')))
  np.testing.assert_array_equal(store.offsets, features.offsets)
  rows = np.r_[0:6, store.offsets[7]:store.offsets[7] + 6]  # two classes, two shards.
  model, params, _ = generator.restore_ema_params(difficulty.scorer_config(config), workdir,
                                                  10, (8, 8, 1))
  images = input_pipeline.load_split_arrays(config.data, 'train')['image']
  positions = arrays['positions'][rows]
  cfg = config.difficulty
  expected = direct_scores(model, params, images[positions] / 127.5 - 1.0,
                           arrays['labels'][rows], positions, cfg.timesteps, cfg.num_noise,
                           cfg.seed)
  np.testing.assert_allclose(arrays['difficulty'][rows], expected, rtol=2e-4)
  assert np.unique(arrays['difficulty']).size == len(arrays['difficulty'])


# The d2c pipeline end to end (the d2c_run fixture: a scorer trained, a split scored); CI
# runs it.
def test_the_pipeline_selects_by_difficulty(d2c_run):
  """D2C's Select phase on the scores: every 4th image of a class, ranked by |score - 0.40|,
  not the every-4th-by-index picks that zero scores gave."""
  config, workdir = d2c_run
  scores = feature_store.FeatureStore(difficulty.store_dir(config, workdir), 'difficulty')
  with np.load(os.path.join(workdir, 'selections', 'd2c-5perclass-seed0', 'selection.npz')) as z:
    offsets, indices = z['offsets'], z['indices']
  for c in range(10):
    s = np.asarray(scores.load('difficulty', c))
    kept = np.arange(0, len(s), 4)
    expected = kept[np.argsort(np.abs(s[kept] - 0.40), kind='stable')[:5]]
    np.testing.assert_array_equal(indices[offsets[c]:offsets[c + 1]], expected)
  assert not np.array_equal(indices, np.tile(np.arange(0, 20, 4), 10))


@pytest.mark.slow  # the d2c_run fixture: a scorer trained, a split scored.
def test_killed_between_shards_then_resumed_equals_uninterrupted(d2c_run, digits_workdir,
                                                                  tmp_path, monkeypatch):
  config, workdir = d2c_run
  config = config.copy_and_resolve_references()
  os.makedirs(tmp_path / 'train')
  scorer = layout.train_name(difficulty.scorer_config(config))
  os.symlink(os.path.join(workdir, 'train', scorer), tmp_path / 'train' / scorer)
  real = difficulty_job._compute_shard
  monkeypatch.setattr(difficulty_job, '_compute_shard', killed_after(real, 1))
  with pytest.raises(KeyboardInterrupt):
    difficulty_job.run(config, str(tmp_path))
  out = difficulty.store_dir(config, str(tmp_path))
  assert sorted(os.listdir(os.path.join(out, 'shards'))) == ['inputs.json', 'shard-00000.npz']
  monkeypatch.setattr(difficulty_job, '_compute_shard', killed_after(real, 2))
  resumed = _arrays(difficulty_job.run(config, str(tmp_path)))  # two shards left: no kill.
  reference = _arrays(feature_store.FeatureStore(difficulty.store_dir(config, workdir)))
  for f in FIELDS:
    np.testing.assert_array_equal(resumed[f], reference[f], err_msg=f)
  # Finished: run again, nothing is computed (a shard would be the kill) or rewritten.
  monkeypatch.setattr(difficulty_job, '_compute_shard', killed_after(real, 0))
  before = os.path.getmtime(os.path.join(out, 'manifest.json'))
  difficulty_job.run(config, str(tmp_path))
  assert os.path.getmtime(os.path.join(out, 'manifest.json')) == before


@pytest.mark.slow  # the d2c_run fixture: a scorer trained, a split scored.
def test_scores_of_other_settings_are_refused(d2c_run):
  config, workdir = d2c_run
  config = config.copy_and_resolve_references()
  config.difficulty.seed = 1  # other noise draws: other scores.
  out = difficulty.store_dir(config, workdir)
  before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  with pytest.raises(ValueError, match='difficulty fingerprint mismatch'):
    difficulty_job.run(config, workdir)
  config.select.name = 'other-seed'
  with pytest.raises(ValueError, match='difficulty fingerprint mismatch'):
    select_job.run(config, workdir)
  assert before == {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}


def test_d2c_without_scores_names_the_file_and_the_stage(digits_workdir, tmp_path):
  config, workdir = _linked_workdir(digits_workdir, tmp_path)
  missing = os.path.join(workdir, 'difficulty', 'DiT-S_2-train-train', 'manifest.json')
  with pytest.raises(FileNotFoundError, match=f'{missing} does not exist; run the difficulty '
                     'stage'):
    select_job.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'selections'))


def test_other_methods_skip_the_difficulty_stage(digits_workdir, tmp_path):
  """The default gadc run pays nothing for D2C: no scorer is trained, nothing is scored."""
  config, workdir = _linked_workdir(digits_workdir, tmp_path)
  config.select.method = 'gadc'
  config.stages = ('difficulty',)
  jobs.run('pipeline', config, workdir)
  assert sorted(os.listdir(workdir)) == ['classifiers', 'features']


@pytest.mark.parametrize('key, value, words', [
    ('timesteps', (100, 1000), 'config.difficulty.timesteps'),
    ('num_noise', 0, 'config.difficulty.num_noise'),
    ('model', 'SiT-S/2', 'config.difficulty.scorer.model must be a DiT')])
def test_bad_settings_are_named_before_any_work(digits_workdir, tmp_path, key, value, words):
  config, workdir = _linked_workdir(digits_workdir, tmp_path)
  config.stages = ('difficulty',)
  (config.difficulty.scorer if key == 'model' else config.difficulty)[key] = value
  with pytest.raises(ValueError, match=words):
    jobs.run('pipeline', config, workdir)
  assert sorted(os.listdir(workdir)) == ['classifiers', 'features']
