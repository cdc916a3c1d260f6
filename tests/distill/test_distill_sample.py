"""The distill_sample job on digits: the distilled set's files, skip and resume, refusals."""

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import layout
from gadc_jax.data import input_pipeline
from gadc_jax.distill import sampler as sampler_lib
from gadc_jax.jobs import distill_sample
from gadc_jax.jobs import train
from tests.conftest import digits_config

IPC = 2


def _config(tfds_dir):
  config = digits_config(tfds_dir)
  config.train = defaults.train()
  config.train.model_overrides = ml_collections.ConfigDict(
      {'depth': 1, 'hidden': 32, 'heads': 2})
  config.train.update(dict(steps=2, batch_size=8, checkpoint_every=2, log_every=2,
                           grid_per_class=1))
  config.train.sampler.steps = 4
  config.distill_sample = defaults.distill_sample()
  cfg = config.distill_sample
  cfg.ipc = IPC
  cfg.sampler.steps = 4
  cfg.window = (1, 4)
  cfg.ot.num_real = 10
  cfg.surrogate.num_real = 10
  return config


@pytest.fixture(scope='module')
def trained(digits_workdir, tfds_dir, tmp_path_factory):
  """(config, workdir): the digits classifiers and a tiny DiT trained for 2 steps."""
  _, source = digits_workdir
  workdir = str(tmp_path_factory.mktemp('distill'))
  shutil.copytree(os.path.join(source, 'classifiers'), os.path.join(workdir, 'classifiers'))
  config = _config(tfds_dir)
  train.run(config, workdir)
  return config, workdir


@pytest.mark.slow  # compiling the guided sampler (all three terms) is most of a minute.
def test_writes_the_distilled_set_then_skips_and_resumes(trained, monkeypatch):
  config, workdir = trained
  record = distill_sample.run(config, workdir)
  name = 'igd+otg-ipc2-seed0'
  out = layout.distilled_dir(workdir, name)
  assert record['guidance'] == list(sampler_lib.TERMS) and record['seconds'] > 0
  with np.load(layout.distilled_file(workdir, name)) as f:
    images, labels = f['images'], f['labels']
  assert images.shape == (10 * IPC, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), IPC))
  # Class-major: the n-th image of class c is sample n of the part file of index n.
  for n in range(IPC):
    with np.load(os.path.join(out, 'parts', f'ipc-{n:04d}-batch-0000.npz')) as part:
      np.testing.assert_array_equal(images[n::IPC], part['images'])
      np.testing.assert_array_equal(part['labels'], np.arange(10))
  assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)
  with open(os.path.join(out, 'grid.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  calls = []
  real_sample = sampler_lib.sample_next

  def counted(*args, **kwargs):
    calls.append(int(args[3].count))
    return real_sample(*args, **kwargs)

  monkeypatch.setattr(sampler_lib, 'sample_next', counted)
  skipped = distill_sample.run(config, workdir)
  assert skipped['fingerprint'] == record['fingerprint'] and not calls  # finished: skipped.

  # A damaged last part is sampled again, alone, to the same bits.
  with open(os.path.join(out, 'parts', 'ipc-0001-batch-0000.npz'), 'ab') as f:
    f.write(b'junk')
  again = distill_sample.run(config, workdir)
  assert calls == [1]
  with np.load(layout.distilled_file(workdir, name)) as f:
    np.testing.assert_array_equal(f['images'], images)
  assert again['fingerprint'] == record['fingerprint']

  # Other options in the same folder are refused, the set kept.
  config = config.copy_and_resolve_references()
  config.distill_sample.name = name
  config.distill_sample.scales.ot = 0.5
  with pytest.raises(ValueError, match='distilled.json'):
    distill_sample.run(config, workdir)
  assert os.path.exists(layout.distilled_file(workdir, name))


@pytest.mark.slow  # the module's fixture trains a DiT.
def test_refuses_a_generator_of_another_class_count(trained, monkeypatch):
  config, workdir = trained
  info = input_pipeline.split_info(config.data, 'train')
  five = info._replace(num_classes=5, class_names=info.class_names[:5])
  monkeypatch.setattr(input_pipeline, 'split_info', lambda *a, **k: five)
  config = config.copy_and_resolve_references()
  config.distill_sample.name = 'five-classes'
  with pytest.raises(ValueError, match='not trained for the 5 classes of the data'):
    distill_sample.run(config, workdir)


@pytest.mark.parametrize('change,error,message', [
    ({'ipc': 101}, ValueError, r'ipc 101 exceeds the sampler.s batch limit max_ipc 100'),
    ({'surrogate.networks': ('nope',)}, ValueError,
     r"surrogate.networks names network 'nope', which config.networks does not have"),
    ({'surrogate.networks': ()}, ValueError, 'influence is on but .* names no network'),
    ({'window': (3, 9)}, ValueError, r'window must be steps .* sampler.steps 4'),
    ({'scales.ot': -1.0}, ValueError, r'scales.ot must be a finite number >= 0'),
    ({'ot.stop_gradient': False}, ValueError, 'not implemented'),
])
def test_bad_options_are_refused_before_any_work(tfds_dir, tmp_path, change, error, message):
  config = _config(tfds_dir)
  for key, value in change.items():
    section = config.distill_sample
    *path, last = key.split('.')
    for part in path:
      section = section[part]
    section[last] = value
  with pytest.raises(error, match=message):
    distill_sample.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_refuses_a_missing_train_run(tfds_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='run the train job first'):
    distill_sample.run(_config(tfds_dir), str(tmp_path))
