"""main.py end to end in a subprocess: bad input gives one clear line and a non-zero exit."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_main(*args, workdir=None):
  cmd = [sys.executable, 'main.py', '--config=configs/digits.py'] + list(args)
  if workdir is not None:
    cmd.append(f'--workdir={workdir}')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize('override, words', [
    ('--config.select.nonexistent=3', "unknown config key 'select.nonexistent'"),
    ('--config.nope.deeper=1', "'nope' is not in the top level"),
    ('--config.job=dance', "unknown job 'dance'"),
    ('--config.select.seed=notanint', 'select.seed'),
])
def test_bad_config_is_one_line(tmp_path, override, words):
  result = run_main(override, workdir=str(tmp_path / 'w'))
  assert result.returncode != 0
  assert words in error_line(result)


def test_missing_config_file(tmp_path):
  cmd = [sys.executable, 'main.py', '--config=configs/nope.py', f'--workdir={tmp_path}']
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert result.returncode != 0
  assert 'configs/nope.py does not exist' in error_line(result)


def test_missing_workdir():
  result = run_main()
  assert result.returncode != 0
  assert 'workdir' in error_line(result)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  result = run_main(workdir=str(blocker / 'sub'))
  assert result.returncode != 0
  assert 'cannot be created' in error_line(result)


def test_unknown_dataset(tmp_path):
  result = run_main('--config.data.name=no_such_dataset_xyz', f'--config.data.data_dir={tmp_path}',
                    workdir=str(tmp_path / 'w'))
  assert result.returncode != 0
  assert 'no_such_dataset_xyz' in error_line(result)


def test_empty_image_folder(tmp_path):
  (tmp_path / 'images').mkdir()
  result = run_main('--config.data.name=folder', f'--config.data.folder={tmp_path / "images"}',
                    workdir=str(tmp_path / 'w'))
  assert result.returncode != 0
  assert str(tmp_path / 'images') in error_line(result)


@pytest.mark.parametrize('arg', ['model=dit,budget=10/class', 'model=sit,budget=100/class'])
def test_imagenet_config_names_what_is_missing(tmp_path, arg):
  cmd = [sys.executable, 'main.py', f'--config=configs/imagenet.py:{arg}',
         f'--workdir={tmp_path / "w"}', f'--config.data.data_dir={tmp_path / "tfds"}']
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert 'needs a manual download' in error_line(result)
  result = subprocess.run(cmd + [f'--config.data.manual_dir={tmp_path}',
                                 '--config.data.name=gadc_digits'],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert "network 'selection' (inception_v3) needs published weights" in error_line(result)
