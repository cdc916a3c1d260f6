"""The house rules, checked on the source: libraries below, jobs on top, configs as data."""

import ast
import glob
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, 'gadc_jax')


def _modules() -> dict[str, str]:
  """{module name: path} of every module of the package."""
  found = {}
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
    found[name.removesuffix('.__init__')] = path
  return found


def _imports(path: str, known: set[str]) -> set[str]:
  """Package modules that the file imports anywhere (function-level imports included)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    out.update(n for n in names if n in known)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(u):
    state[u] = 'open'
    stack.append(u)
    for v in sorted(graph[u]):
      if state.get(v) == 'open':
        return stack[stack.index(v):] + [v]
      if v not in state and (found := visit(v)):
        return found
    stack.pop()
    state[u] = 'done'
    return None

  for u in sorted(graph):
    if u not in state and (found := visit(u)):
      return found
  return None


def test_no_import_cycles():
  assert _cycle(_graph()) is None, ' -> '.join(_cycle(_graph()))


def test_cycle_finder_finds_one():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_jobs_import_libraries_only():
  graph = _graph()
  jobs = {m for m in graph if m.startswith('gadc_jax.jobs.')}
  assert jobs >= {f'gadc_jax.jobs.{j}' for j in ('train_classifier', 'features', 'select',
                                                 'train', 'sample', 'evaluate', 'pipeline')}
  for job in sorted(jobs):
    assert not graph[job] & jobs, f'{job} imports the job(s) {sorted(graph[job] & jobs)}'
  libraries = set(graph) - jobs - {'gadc_jax.jobs'}
  for library in sorted(libraries):
    assert not graph[library] & (jobs | {'gadc_jax.jobs'}), (
        f'the library {library} imports a job: {sorted(graph[library] & jobs)}')


# Importing any of these fails inside the interpreter that loads the configs.
_BLOCK_FRAMEWORKS = textwrap.dedent('''
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('jax', 'jaxlib', 'tensorflow', 'tensorflow_datasets', 'ott',
                                  'flax', 'orbax', 'torch'):
          raise ImportError(f'{{name}} is blocked: configs must be data')
        return None

    sys.meta_path.insert(0, Blocked())
    sys.path.insert(0, {repo!r})
    import runpy
    for spec in {specs!r}:
      path, _, arg = spec.partition(':')
      get_config = runpy.run_path(path)['get_config']
      config = get_config(arg) if arg else get_config()
      assert config.job, spec
      print(spec, 'ok', len(config.to_dict()))
''')


def _config_specs() -> list[str]:
  files = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
  assert files
  return [spec for f in files for spec in (f, f + ':smoke=True')]


def test_every_config_loads_without_jax_or_tensorflow():
  specs = _config_specs()
  code = _BLOCK_FRAMEWORKS.format(repo=REPO, specs=specs)
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count(' ok ') == len(specs)


def test_the_blocker_blocks():
  code = _BLOCK_FRAMEWORKS.format(repo=REPO, specs=[]) + '\nimport jax\n'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert result.returncode != 0 and 'jax is blocked' in result.stderr


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))))
def test_every_config_docstring_gives_its_command(path):
  doc = ast.get_docstring(ast.parse(open(path).read()))
  rel = os.path.relpath(path, REPO)
  assert f'python main.py --config={rel}' in doc, rel
