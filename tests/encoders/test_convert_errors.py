"""Wrong, truncated or garbage checkpoints fail with a ValueError that names the problem."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def resnet34_file(tmp_path_factory):
  torch.manual_seed(0)
  path = str(tmp_path_factory.mktemp('ckpt') / 'resnet34.pth')
  torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
  return path


def test_a_good_file_converts(resnet34_file):
  variables = convert.resnet_from_torch(resnet34_file, 34)
  assert variables['params']['fc']['kernel'].shape == (512, 1000)
  assert variables['batch_stats']['bn1']['var'].shape == (64,)


def test_missing_tensor_is_named(resnet34_file):
  state = convert.load_state_dict(resnet34_file)
  del state['layer3.1.bn2.running_var']
  with pytest.raises(ValueError, match=r'lacks 1 of .*layer3\.1\.bn2\.running_var'):
    convert.resnet_from_torch(state, 34)


def test_misshaped_tensor_is_named_with_both_shapes(resnet34_file):
  state = convert.load_state_dict(resnet34_file)
  state['layer2.0.conv1.weight'] = np.zeros((128, 64, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r'layer2\.0\.conv1\.weight: expected \(128, 64, 3, 3\), '
                     r'found \(128, 64, 5, 5\)'):
    convert.resnet_from_torch(state, 34)


def test_checkpoint_of_another_network(resnet34_file):
  with pytest.raises(ValueError, match=r'lacks .*bn3.*checkpoint of another network'):
    convert.resnet_from_torch(resnet34_file, 50)
  with pytest.raises(ValueError, match=r'Conv2d_1a_3x3\.conv\.weight.*it has e\.g\. conv1'):
    convert.inception_from_torch(resnet34_file, 'fid')


def test_truncated_file(resnet34_file, tmp_path):
  data = open(resnet34_file, 'rb').read()
  path = tmp_path / 'truncated.pth'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r'truncated\.pth is not a readable PyTorch checkpoint'):
    convert.resnet_from_torch(str(path), 34)


def test_garbage_and_non_checkpoints(tmp_path):
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'this is not a checkpoint\n' * 10)
  with pytest.raises(ValueError, match='garbage.pth is not a readable PyTorch checkpoint'):
    convert.load_state_dict(str(garbage))
  listing = tmp_path / 'list.pth'
  torch.save([1, 2, 3], str(listing))
  with pytest.raises(ValueError, match='list.pth holds a list without tensors'):
    convert.load_state_dict(str(listing))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    convert.load_state_dict(str(tmp_path / 'absent.pth'))
  with pytest.raises(ValueError, match='lacks'):
    convert.dinov2_from_torch({}, 's')
