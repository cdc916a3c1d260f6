"""The repa_targets job on a digits selection: transformers' DINOv2 patch tokens of exactly
the selected images, float16, resumable, refused for another selection (by the train job
too); the training set keeps them float16."""

import os
import shutil

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from gadc_jax import artifacts  # pylint: disable=g-import-not-at-top
from gadc_jax import layout  # pylint: disable=g-import-not-at-top
from gadc_jax import networks  # pylint: disable=g-import-not-at-top
from gadc_jax import repa_targets  # pylint: disable=g-import-not-at-top
from gadc_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import resnet  # pylint: disable=g-import-not-at-top
from gadc_jax.jobs import repa_targets as repa_job  # pylint: disable=g-import-not-at-top
from gadc_jax.jobs import train  # pylint: disable=g-import-not-at-top
from gadc_jax.training import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
from tests.conftest import digits_config, killed_after  # pylint: disable=g-import-not-at-top

SIDE = 56  # DINOv2 input: 4 x 4 patches of 14, the 16 tokens of the DiT's 2 x 2 patches of 8 x 8.


def _dinov2(path: str):
  """A random transformers DINOv2 ViT-S/14, saved at `path`: native 518 x 518 positions
  as published, resized to the 56 x 56 input as REPA resizes them to 224."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
      patch_size=14, attn_implementation='eager')).eval()
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  return model


def _expected_tokens(model, config, positions) -> tuple[np.ndarray, np.ndarray]:
  """(ids, transformers' last_hidden_state[:, 1:]) of the images at `positions`, fed the
  network input that config.networks.repa describes."""
  images = input_pipeline.read_examples(config.data, 'train', positions)
  x = np.asarray(networks.preprocess(images['image'],
                                     networks.input_spec(config.networks.repa)))
  pixels = (x * 0.5 + 0.5 - np.array(resnet.IMAGENET_MEAN)) / np.array(resnet.IMAGENET_STD)
  with torch.no_grad():
    out = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32))
  return images['id'], out.last_hidden_state[:, 1:].numpy()


def _selection(config, workdir, name, per_class) -> tuple[np.ndarray, np.ndarray]:
  """(positions, ids) of a selection of the first `per_class` images of each class, written
  as the select job records one (its content is not what these tests are about)."""
  info = input_pipeline.split_info(config.data, 'train')
  labels = input_pipeline.load_split_arrays(config.data, 'train')['label']
  positions = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
  ids = input_pipeline.read_examples(config.data, 'train', positions)['id'].astype(str)
  out = layout.selection_dir(workdir, name)
  artifacts.atomic_write_npz(os.path.join(out, 'selection.npz'), positions=positions,
                             labels=labels[positions].astype(np.int32), ids=ids)
  artifacts.atomic_write_json(os.path.join(out, 'selection.json'), {
      'fingerprint': f'selection-{name}',
      'inputs': {'dataset': [info.dataset, info.version, info.split]},
      'artifacts': artifacts.describe_files(out, ['selection.npz'])})
  return positions, ids


def test_targets_of_the_selected_images(tfds_dir, tmp_path, monkeypatch):
  config = digits_config(tfds_dir)
  workdir = str(tmp_path / 'w')
  model = _dinov2(str(tmp_path / 'dinov2.safetensors'))
  config.networks.repa = {'arch': 'dinov2_s14', 'checkpoint': str(tmp_path / 'dinov2.safetensors'),
                          'input_size': SIDE, 'with_patch_tokens': True}
  positions, ids = _selection(config, workdir, 'r3', 3)
  config.train.selection = 'r3'
  config.train.model_overrides = ml_collections.ConfigDict({'repa_depth': 1})
  config.train.repa.features = 'repa'
  config.repa_targets.update(shard_size=7, batch_size=4)

  # Killed after two of the five shards, then resumed.
  monkeypatch.setattr(artifacts, 'atomic_write_npy', killed_after(artifacts.atomic_write_npy, 2))
  with pytest.raises(KeyboardInterrupt):
    repa_job.run(config, workdir)
  monkeypatch.undo()
  out = layout.repa_targets_dir(workdir, config)
  assert out == os.path.join(workdir, 'selections', 'r3', 'repa-repa')
  assert sorted(f for f in os.listdir(out) if f.endswith('.npy')) == [
      'tokens-00000.npy', 'tokens-00001.npy']
  record = repa_job.run(config, workdir)
  assert record['shape'] == [30, 16, 384] and len(record['files']) == 5

  tokens = repa_targets.open_targets(config, workdir).load()
  assert tokens.dtype == np.float16 and tokens.shape == (30, 16, 384)
  read_ids, expected = _expected_tokens(model, config, positions)
  np.testing.assert_array_equal(read_ids, ids)
  np.testing.assert_allclose(tokens.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
  assert repa_job.run(config, workdir) == record  # finished: skipped.

  # The training set keeps them float16; batches widen them to float32.
  data = dataset_lib.build_training_set(config, positions, np.zeros(30, np.int32), None,
                                        tokens)
  assert data.repa.dtype == np.float16
  batch = dataset_lib.host_batch(data, np.arange(4), None)
  assert batch['repa'].dtype == np.float32
  np.testing.assert_array_equal(batch['repa'], tokens[:4].astype(np.float32))

  # Targets of another selection, copied in: refused by both jobs.
  _selection(config, workdir, 'r4', 4)
  config.train.selection = 'r4'
  shutil.copytree(out, layout.repa_targets_dir(workdir, config))
  with pytest.raises(ValueError, match='REPA targets fingerprint mismatch'):
    train.run(config, workdir)
  with pytest.raises(ValueError, match='REPA targets fingerprint mismatch'):
    repa_job.run(config, workdir)


def test_bad_input(tfds_dir, tmp_path):
  config = digits_config(tfds_dir)
  with pytest.raises(ValueError, match='repa.features is not set'):
    repa_job.run(config, str(tmp_path))
  config.train.repa.features = 'dino'
  with pytest.raises(ValueError, match="names network 'dino', which config.networks does not"):
    repa_job.run(config, str(tmp_path))
  config.repa_targets.shard_size = 0
  with pytest.raises(ValueError, match='config.repa_targets.shard_size must be a positive'):
    repa_job.run(config, str(tmp_path))
