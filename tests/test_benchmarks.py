"""Every benchmarks/*.py runs as its docstring says: `python benchmarks/NAME.py [...]` from the
repository root of a checkout with nothing installed (no PYTHONPATH, gadc_jax not installed),
and prints one JSON object as its last line.

Each benchmark runs once with tiny arguments (a few seconds of work; compilation is most of
it). A new benchmark must be added to RUNS: test_every_benchmark_has_tiny_arguments fails
until it is.
"""

import ast
import glob
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, NamedTuple, Sequence

import pytest

from tests.conftest import REPO

_TIMEOUT_S = 600  # a hang fails instead of blocking the suite.


class Run(NamedTuple):
  args: Sequence[str]
  keys: frozenset  # keys the last line's JSON object must have.
  slow: bool = False  # over ~30 s on the 2-core CPU.
  check: Callable[[dict], None] = lambda record: None  # further checks of the record.
  prepare: Callable[[], None] = lambda: None  # writes what the arguments name.


def _torch_side_available() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ('torch', 'diffusers'))


def _check_features(record: dict) -> None:
  assert [r['dtype'] for r in record['results']] == ['float32']
  assert record['results'][0]['images_per_s'] > 0


def _check_fid(record: dict) -> None:
  assert record['fid_n'] == 64 and record['pr_n'] == 32 and record['dim'] == 16
  assert math.isfinite(record['fid']) and 0 <= record['precision'] <= 1


def _check_select(record: dict) -> None:
  assert len(record['indices']) == 10 and math.isfinite(record['objective'])
  assert isinstance(record['objective_converged'], bool)


def _check_train(record: dict) -> None:
  assert record['jax_steps_per_s'] > 0
  # The PyTorch side runs in a child process when torch and diffusers are installed.
  if _torch_side_available():
    assert record['torch_steps_per_s'] > 0 and record['ratio'] > 0
  else:
    assert record['torch_steps_per_s'] is None and record['ratio'] is None


_GEOMETRY_PLOT = os.path.join(tempfile.gettempdir(), 'geometry_bench_test.png')
# Four well-separated outliers per class: k-center's first pick is the inlier nearest the
# class mean, every later one an outlier (two of them are farther apart than any inlier
# is from either), so with m = 4 it picks exactly 3; m fresh points of the mixture, none.
_GEOMETRY_ARGS = ['--dims', '16', '--budgets', '4', '--classes', '2', '--modes', '3',
                  '--pool', '40', '--reference', '40', '--outlier_fraction', '0.1',
                  '--out', _GEOMETRY_PLOT]
_GEOMETRY_KEYS = frozenset({'benchmark', 'device', 'dims', 'budgets', 'outliers_per_class',
                            'stand_ins', 'plot', 'results'})


def _check_geometry(methods: Sequence[str]) -> Callable[[dict], None]:
  def check(record: dict) -> None:
    rows = {r['method']: r for r in record['results']}
    assert sorted(rows) == sorted(['true-sample', *methods])
    assert record['outliers_per_class'] == 4
    for r in rows.values():
      assert 0 <= r['modes_hit'] <= 1 and 0 <= r['weight_hit'] <= 1, r
      assert r['modes_hit'] == 0 or r['weight_hit'] > 0, r
      assert 0 <= r['outliers'] <= 4 and r['w2'] > 0 and r['mmd'] >= 0, r
    assert rows['true-sample']['outliers'] == 0
    assert rows['kcenter']['outliers'] == 3
    with open(record['plot'], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  return check


def _check_study(record: dict) -> None:
  assert list(record['cells']) == ['random-10%-seed0'] and record['grid_cells'] == 5
  assert list(record['selection_seconds']) == ['random-10%-seed0']
  seconds = record['cells']['random-10%-seed0']
  assert record['cells_seconds'] >= seconds['total'] >= seconds['train'] > 0
  assert record['cells_per_hour'] == pytest.approx(3600 / record['cells_seconds'])


def _check_mfu(record: dict) -> None:
  assert record['model'] == 'DiT-S/2' and record['forward_gflops'] > 0 and record['mfu'] > 0


def _check_memory(record: dict) -> None:
  assert set(record['memory_gib']) == {'none', 'block', 'dots'}
  for plan in record['memory_gib'].values():
    assert plan['peak'] == pytest.approx(plan['arguments'] + plan['temporaries'])
    assert plan['arguments'] > 0


# A stand-in for a checkout of the official DiT code (its models.py and diffusion package, as
# train_bench.py --peer imports them): a tiny torch model of the same call signature.
_PEER_REPO = os.path.join(tempfile.gettempdir(), 'train_bench_peer_standin')
_PEER_FILES = {
    'models.py': (
        'import torch\n'
        'class Tiny(torch.nn.Module):\n'
        '  def __init__(self, input_size, num_classes):\n'
        '    super().__init__()\n'
        '    self.embed = torch.nn.Embedding(num_classes, 8)\n'
        '    self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)\n'
        '  def forward(self, x, t, y):\n'
        '    return self.conv(x) + self.embed(y)[:, :, None, None]\n'
        "DiT_models = {'DiT-S/2': Tiny}\n"),
    'diffusion/__init__.py': (
        'class Diffusion:\n'
        '  num_timesteps = 1000\n'
        '  def training_losses(self, model, x, t, model_kwargs):\n'
        "    return {'loss': ((model(x, t, **model_kwargs)[:, :4] - x) ** 2).mean((1, 2, 3))}\n"
        'def create_diffusion(timestep_respacing):\n'
        '  return Diffusion()\n'),
}


def _write_peer_standin() -> None:
  for name, text in _PEER_FILES.items():
    path = os.path.join(_PEER_REPO, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)


def _check_peer(record: dict) -> None:
  assert record['ours']['steps_per_s'] > 0
  for mode in ('eager', 'compiled'):
    assert record['peer'][mode]['steps_per_s'] > 0, mode
  assert record['ratio_vs_compiled'] == pytest.approx(
      record['ours']['steps_per_s'] / record['peer']['compiled']['steps_per_s'])


def _check_plan(record: dict) -> None:
  stages = record['stages']
  assert list(stages) == ['features', 'select', 'train', 'sample', 'evaluate']
  for stage in stages.values():
    assert stage['projected_s'] > 0
    assert all(r['per_s'] > 0 for r in stage['measured'].values())
  assert record['total_projected_s'] == pytest.approx(
      sum(s['projected_s'] for s in stages.values()))


def _check_distill(record: dict) -> None:
  assert record['classes'] == 2 and record['steps'] == 4 and record['window'] == [1, 3]
  assert record['igd_s'] > 0 and record['igd_otg_s'] > 0
  assert record['ratio'] == pytest.approx(record['igd_otg_s'] / record['igd_s'])


RUNS = {
    'distill_bench.py': [Run(
        ['--steps', '4', '--window', '1,3', '--classes', '2', '--ipc', '2', '--num_real', '8',
         '--repeats', '1', '--depth', '1', '--hidden', '32'],
        frozenset({'device', 'steps', 'window', 'classes', 'ipc', 'num_real', 'compile_s',
                   'igd_s', 'igd_otg_s', 'ratio'}),
        slow=True, check=_check_distill)],
    'features_bench.py': [Run(
        ['--batch', '1', '--iters', '1', '--size', '75', '--dtypes', 'float32'],
        frozenset({'benchmark', 'platform', 'device', 'results'}), check=_check_features)],
    'fid_bench.py': [Run(
        ['--fid_n=64', '--pr_n=32', '--dim=16'],
        frozenset({'device', 'cpu_count', 'dim', 'fid_n', 'fid_seconds', 'fid', 'pr_n',
                   'pr_seconds', 'precision', 'recall'}), check=_check_fid)],
    'geometry_bench.py': [
        Run([*_GEOMETRY_ARGS, '--methods', 'random,herding,kcenter,ccs,dq,d2c'],
            _GEOMETRY_KEYS, check=_check_geometry(['random', 'herding', 'kcenter', 'ccs',
                                                   'dq', 'd2c'])),
        # GADC's compilation alone is most of a minute on the 2-core CPU.
        Run([*_GEOMETRY_ARGS, '--methods', 'gadc,kcenter'], _GEOMETRY_KEYS, slow=True,
            check=_check_geometry(['gadc', 'kcenter'])),
    ],
    # Compiling GADC and the SD-VAE at toy sizes is most of its minutes.
    'imagenet_plan.py': [Run(['--tiny'], frozenset({'config', 'stages', 'device',
                                                   'device_counts', 'total_projected_s'}),
                             slow=True, check=_check_plan)],
    'select_bench.py': [Run(
        ['--repeats', '1', '--budgets', '10', '--batch', '1', '--no-exhaustive'],
        frozenset({'greedy_s', 'refine_s', 'total_s', 'compile_s', 'objective',
                   'objective_converged', 'indices', 'classes_per_s', 'device'}),
        slow=True, check=_check_select)],
    'study_bench.py': [Run(
        ['--config', 'configs/digits_study.py:smoke=True', '--cells', 'random-10%-seed0',
         '--data_dir', os.path.join(tempfile.gettempdir(), 'study_bench_tfds')],
        frozenset({'benchmark', 'config', 'device', 'workers', 'shared_seconds',
                   'selection_seconds', 'cells', 'cells_seconds', 'cells_per_hour',
                   'grid_cells', 'projected_minutes'}),
        slow=True, check=_check_study)],
    'train_bench.py': [
        Run(['--steps', '1', '--batch', '2'],
            frozenset({'device', 'batch', 'jax_steps_per_s', 'torch_steps_per_s', 'ratio'}),
            slow=True, check=_check_train),
        Run(['--mfu', '--peak_tflops', '1', '--model', 'DiT-S/2', '--batch', '2', '--steps', '1'],
            frozenset({'device', 'model', 'batch', 'remat', 'steps_per_s', 'forward_gflops',
                       'mfu'}),
            slow=True, check=_check_mfu),
        Run(['--memory', '--model', 'DiT-S/8', '--batch', '2'],
            frozenset({'device', 'model', 'batch', 'memory_gib'}), slow=True,
            check=_check_memory),
        Run(['--peer', _PEER_REPO, '--model', 'DiT-S/2', '--batch', '2', '--steps', '1'],
            frozenset({'device', 'model', 'batch', 'ours', 'peer', 'ratio_vs_compiled'}),
            slow=True, check=_check_peer, prepare=_write_peer_standin),
    ],
}


def _scripts() -> list[str]:
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'benchmarks', '*.py')))


def _clean_env() -> dict:
  """This environment without PYTHONPATH: the benchmark must find gadc_jax itself."""
  return {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


def _run(script: str, args: Sequence[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, f'benchmarks/{script}', *args], cwd=REPO,
                        env=_clean_env(), capture_output=True, text=True, timeout=_TIMEOUT_S)


def _params():
  params = []
  for script in _scripts():
    for i, run in enumerate(RUNS.get(script, [])):
      params.append(pytest.param(script, run, id=f'{script}-{i}',
                                 marks=[pytest.mark.slow] if run.slow else []))
  return params


def test_every_benchmark_has_tiny_arguments():
  scripts = _scripts()
  assert scripts, 'no benchmarks/*.py found'
  missing = [s for s in scripts if not RUNS.get(s)]
  assert not missing, f'add tiny arguments for {missing} to RUNS in {__file__}'
  stale = sorted(set(RUNS) - set(scripts))
  assert not stale, f'RUNS names benchmarks that do not exist: {stale}'


@pytest.mark.parametrize('script,run', _params())
def test_benchmark_runs_and_prints_json(script, run):
  run.prepare()
  result = _run(script, run.args)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines, f'no output; stderr: {result.stderr[-2000:]}'
  record = json.loads(lines[-1])
  assert isinstance(record, dict), lines[-1]
  assert run.keys <= set(record), f'missing keys {sorted(run.keys - set(record))}'
  run.check(record)


def _usage(script: str) -> list[str]:
  """The docstring's usage lines: `python benchmarks/...` and their indented continuations."""
  with open(os.path.join(REPO, 'benchmarks', script)) as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ''
  lines, inside = [], False
  for line in doc.splitlines():
    if line.strip().startswith('python '):
      lines.append(line.strip())
      inside = True
    elif inside and line.startswith('        ') and line.strip().startswith('['):
      lines[-1] += ' ' + line.strip()
    else:
      inside = False
  return lines


@pytest.mark.parametrize('script', _scripts())
def test_docstring_usage_names_real_flags(script):
  usage = _usage(script)
  assert usage, f'benchmarks/{script} has no `python benchmarks/{script} ...` usage line'
  result = _run(script, ['--help'])
  # argparse exits 0 after --help, absl (fid_bench) exits 1.
  assert result.returncode in (0, 1) and 'Traceback' not in result.stderr, result.stderr[-2000:]
  known = set(re.findall(r'--([A-Za-z][\w-]*)', result.stdout))
  for line in usage:
    assert line.startswith(f'python benchmarks/{script}'), line
    used = set(re.findall(r'--([A-Za-z][\w-]*)', line))
    assert used <= known, f'{line!r} names flags --help does not know: {sorted(used - known)}'
