"""generator.load_text_table: the text_embeddings job's .npz, and clear errors for others."""

import ml_collections
import numpy as np
import pytest

from gadc_jax import generator


def _cfg(path):
  return ml_collections.ConfigDict({'text_embeddings': str(path)})


def _write(path, **arrays):
  np.savez(path, **arrays)
  return _cfg(path)


def test_reads_tokens_and_mask(tmp_path):
  rng = np.random.default_rng(0)
  tokens = rng.standard_normal((4, 16, 8)).astype(np.float16)
  mask = (np.arange(16) < np.array([[3], [16], [1], [5]])).astype(np.int64)
  table = generator.load_text_table(_write(tmp_path / 't.npz', tokens=tokens, mask=mask), 4)
  assert table.tokens.dtype == table.mask.dtype == np.float32
  np.testing.assert_array_equal(table.tokens, tokens.astype(np.float32))
  np.testing.assert_array_equal(table.mask, mask)
  assert generator.load_text_table(_cfg(''), 4) is None


@pytest.mark.parametrize('arrays,message', [
    ({'tokens': np.zeros((4, 16, 8))}, r"holds \['tokens'\]; expected a .npz with 'tokens'"),
    ({'tokens': np.zeros((4, 16)), 'mask': np.ones((4, 16))}, r'tokens \(4, 16\) and mask'),
    ({'tokens': np.zeros((4, 16, 8)), 'mask': np.ones((4, 15))}, r'mask \(4, 15\)'),
    ({'tokens': np.zeros((3, 16, 8)), 'mask': np.ones((3, 16))}, '3 classes, the dataset 4'),
    ({'tokens': np.full((4, 16, 8), np.nan), 'mask': np.ones((4, 16))}, '512 non-finite'),
    ({'tokens': np.zeros((4, 16, 8), int), 'mask': np.ones((4, 16))}, 'finite floats'),
    ({'tokens': np.zeros((4, 16, 8)), 'mask': np.full((4, 16), 2)}, r'only 0 .* found \[2\]'),
])
def test_wrong_contents(tmp_path, arrays, message):
  with pytest.raises(ValueError, match=message):
    generator.load_text_table(_write(tmp_path / 't.npz', **arrays), 4)


def test_wrong_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.npz does not exist'):
    generator.load_text_table(_cfg(tmp_path / 'missing.npz'), 4)
  np.save(tmp_path / 'old.npy', np.zeros((4, 16, 8), np.float32))  # the former format.
  with pytest.raises(ValueError, match=r'old.npy holds one array \(4, 16, 8\).*text_embeddings'):
    generator.load_text_table(_cfg(tmp_path / 'old.npy'), 4)
  (tmp_path / 'junk.npz').write_text('not numpy')
  with pytest.raises(ValueError, match='junk.npz is not a .npz file'):
    generator.load_text_table(_cfg(tmp_path / 'junk.npz'), 4)
  _write(tmp_path / 'cut.npz', tokens=np.zeros((4, 16, 8)), mask=np.ones((4, 16)))
  data = (tmp_path / 'cut.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='cut.npz'):
    generator.load_text_table(_cfg(tmp_path / 'cut.npz'), 4)
