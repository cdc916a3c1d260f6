"""The study's grid and its cells: which runs it measures, and how one cell runs.

A cell is one measured run: select -> train -> sample -> evaluate (against each reference of
config.study.references: by default the train and the held-out test split) -> CAS, for one
method (or GADC ablation), budget and seed, or the full-data reference (train on the whole
split). The grid, in order:

    config.study.methods   x config.study.budgets x config.study.seeds   family 'method'
    config.study.ablations x config.study.budgets x config.study.seeds   family 'ablation'
                             (GADC with each ablation's config overrides)
    one full-data cell (seed config.study.seeds[0]) if config.study.full_reference
                                                                         family 'reference'

Selections are a shared stage too: every distinct selection of the grid is made once, in
WORKDIR/selections/NAME, before the cells. A method that reads no seed (GADC and its
ablations, herding, k-center, D2C: `methods.reads_seed`) makes the same subset for every
seed, so its cells share one selection named GROUP-BUDGET, and only their training and
sampling seeds differ; a seeded method's cells each have their own, GROUP-BUDGET-seedSEED.

Each cell works in its own workdir, WORKDIR/cells/CELL/, in which the shared stages' folders
of the study workdir (classifiers, features, difficulty, eval_cache, selections, and D2C's
scorer run) are relative symbolic links: the existing jobs and `gadc_jax.layout` run there
unchanged, their own resume and fingerprint checks included, and a cell's folder holds all
it made (rm it to redo the cell alone; its selection stays in WORKDIR/selections). A cell
ends by writing cell.json (the format the report reads, plus the fingerprint of the cell's
inputs; the study job's run_cell runs it); a cell with a cell.json of the same inputs is
finished.
"""

import dataclasses
import os
from typing import Any

import ml_collections

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import difficulty
from gadc_jax import layout
from gadc_jax import validation
from gadc_jax.evaluation import cas
from gadc_jax.selection import budget as budget_lib
from gadc_jax.selection import methods as methods_lib

# The study workdir's folders that every cell reads, linked into each cell's workdir.
SHARED = ('classifiers', 'features', 'difficulty', 'eval_cache', 'selections')

# What a cell's hparams record of its config besides its own overrides: the training and
# sampling the cells share, so that a report across studies tells their cells apart.
_HPARAMS = ('select.allocation', 'train.model', 'train.steps', 'train.batch_size',
            'train.learning_rate', 'train.ema_decay', 'sample.num_samples',
            'sample.sampler.method', 'sample.sampler.steps', 'sample.sampler.cfg_scale')

# Metric name prefixes where lower is better (the evaluate job's names); the rest: higher.
LOWER_IS_BETTER = ('fid_', 'sfid_', 'kid_')

FULL_GROUP = 'full'
FULL_BUDGET = '100%'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid. overrides: flat {'select.method': 'gadc', ...} applied to the
  study's config to make the cell's."""
  name: str
  group: str
  family: str
  budget: str
  seed: int
  overrides: dict[str, Any]

  @property
  def folder(self) -> str:
    return self.name.replace('/', 'per')


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def budget_value(budget: str) -> float:
  """A number to plot a budget against: '10%' -> 0.1, '1000' -> 1000, '10/class' -> 10."""
  budget = str(budget)
  if budget.endswith('%'):
    return float(budget[:-1]) / 100
  return float(budget.split('/')[0])


def _seeded(seed: int) -> dict[str, Any]:
  # The seed of a cell's training (the model's init and batches) and sampling noise; CAS's
  # classifier keeps its network's fixed seed, a selection the seed `_selected` gives it.
  return {'train.seed': seed, 'sample.seed': seed}


def _selected(group: str, method: str, budget: str, seed: int) -> dict[str, Any]:
  """The select overrides of a cell: its selection's method, budget, name and, for a method
  that reads one, seed (see the module docstring)."""
  overrides = {'select.method': method, 'select.budget': budget,
               'select.name': f'{group}-{budget}'.replace('/', 'per')}
  if methods_lib.reads_seed(method):
    overrides['select.name'] += f'-seed{seed}'
    overrides['select.seed'] = seed
  return overrides


def cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The grid of config.study, in order (see the module docstring)."""
  cfg = config.study
  grid = []
  for method in cfg.methods:
    for budget in cfg.budgets:
      for seed in cfg.seeds:
        grid.append(Cell(f'{method}-{budget}-seed{seed}', method, 'method', budget, seed,
                         {**_selected(method, method, budget, seed), **_seeded(seed)}))
  for name, overrides in cfg.ablations.items():
    group = f'gadc-{name}'
    for budget in cfg.budgets:
      for seed in cfg.seeds:
        grid.append(Cell(f'{group}-{budget}-seed{seed}', group, 'ablation', budget, seed,
                         {**_selected(group, 'gadc', budget, seed), **flatten(overrides),
                          **_seeded(seed)}))
  if cfg.full_reference:
    seed = cfg.seeds[0]
    grid.append(Cell(f'{FULL_GROUP}-{FULL_BUDGET}-seed{seed}', FULL_GROUP, 'reference',
                     FULL_BUDGET, seed, {'train.selection': '', **_seeded(seed)}))
  return grid


def selections(config: ml_collections.ConfigDict,
               grid: list[Cell]) -> list[ml_collections.ConfigDict]:
  """The configs of the grid's distinct selections, in grid order: the first cell's of each
  select.name (its other cells differ only in training and sampling seeds)."""
  made = {}
  for cell in grid:
    cell_cfg = cell_config(config, cell)
    if cell_cfg.train.selection:
      made.setdefault(cell_cfg.select.name, cell_cfg)
  return list(made.values())


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *path, leaf = key.split('.')
  section = config
  for name in path:
    section = section[name]
  if leaf not in section:
    raise KeyError(leaf)
  section[leaf] = value


def cell_config(config: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
  """The config the cell's jobs run with: the study's, its overrides applied, no study."""
  cell_cfg = config.copy_and_resolve_references()
  with cell_cfg.unlocked():
    del cell_cfg['study']
  for key, value in cell.overrides.items():
    _set(cell_cfg, key, value)
  return cell_cfg


def reads_difficulty(cell_cfg: ml_collections.ConfigDict) -> bool:
  return bool(cell_cfg.train.selection) and cell_cfg.select.method in difficulty.METHODS


def check_config(config: ml_collections.ConfigDict) -> None:
  """config.study, checked before any work: one ValueError naming the key."""
  cfg = config.study
  validation.require(cfg, 'config.study', positive_ints=('workers',))
  for key in ('methods', 'budgets', 'seeds', 'references'):
    if not cfg[key] and (key != 'methods' or not cfg.ablations):
      raise ValueError(f'config.study.{key} is empty')
  for method in cfg.methods:
    if method not in defaults.METHODS:
      raise ValueError(f'config.study.methods: unknown method {method!r}; known: '
                       + ', '.join(defaults.METHODS))
  for name, reference in cfg.references.items():
    if not reference:
      raise ValueError(f'config.study.references.{name} is empty: give a reference as '
                       "config.evaluate.reference takes ('split:NAME' or a reference .npz)")
  for seed in cfg.seeds:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
      raise ValueError(f'config.study.seeds must be integers >= 0, got {seed!r}')
  for budget in cfg.budgets:
    probe = config.select.copy_and_resolve_references()
    probe.budget = budget
    try:
      budget_lib.check_options(probe)
    except ValueError as e:
      raise ValueError(f'config.study.budgets: {e}') from None
  for name, overrides in cfg.ablations.items():
    for key, value in flatten(overrides).items():
      try:
        _set(config.copy_and_resolve_references(), key, value)
      except KeyError:
        raise ValueError(f'config.study.ablations.{name}: the config has no key {key}') from None
  names = [c.name for c in cells(config)]
  if len(set(names)) != len(names):
    raise ValueError('config.study: the grid names a cell twice (repeated methods, budgets, '
                     'seeds or ablations)')
  cas.check_config(config, cfg.cas)


def cell_dir(workdir: str, cell: Cell) -> str:
  return os.path.join(workdir, 'cells', cell.folder)


def cell_inputs(config: ml_collections.ConfigDict, cell: Cell) -> dict[str, Any]:
  """What a cell's results depend on: its config (less what names the job and its stages),
  the references it is evaluated against and CAS's settings."""
  cell_cfg = cell_config(config, cell).to_dict()
  for key in ('job', 'stages'):
    cell_cfg.pop(key, None)
  return {'config': cell_cfg, 'references': config.study.references.to_dict(),
          'cas': config.study.cas.to_dict()}


def _link(target: str, link: str) -> None:
  """A relative symbolic link `link` -> `target` (an existing right one is kept)."""
  relative = os.path.relpath(target, os.path.dirname(link))
  if os.path.islink(link):
    if os.readlink(link) == relative:
      return
    os.remove(link)
  elif os.path.exists(link):
    raise ValueError(f'{link} exists and is not the link to the shared {target} a cell '
                     'reads; remove it')
  os.symlink(relative, link)


def link_shared(config: ml_collections.ConfigDict, workdir: str, cell_cfg, out: str) -> None:
  """Links the shared stages' folders of `workdir` into the cell workdir `out`."""
  for name in SHARED:
    target = os.path.join(workdir, name)
    os.makedirs(target, exist_ok=True)
    _link(target, os.path.join(out, name))
  if reads_difficulty(cell_cfg):  # its difficulty store is checked against the scorer run.
    scorer = layout.train_dir(workdir, difficulty.scorer_config(config))
    os.makedirs(os.path.join(out, 'train'), exist_ok=True)
    _link(scorer, layout.train_dir(out, difficulty.scorer_config(config)))


def finished(config: ml_collections.ConfigDict, workdir: str, cell: Cell) -> dict | None:
  """The cell's cell.json if it is finished; a ValueError if it was made from other inputs."""
  path = os.path.join(cell_dir(workdir, cell), 'cell.json')
  if not os.path.exists(path):
    return None
  record = artifacts.read_json(path)
  artifacts.check_fingerprint(path, artifacts.fingerprint(cell_inputs(config, cell)),
                              record['fingerprint'], 'study cell')
  return record


def hparams(cell_cfg: ml_collections.ConfigDict, cell: Cell) -> dict[str, Any]:
  """The cell's flat, scalar hyper-parameters: its overrides and the shared `_HPARAMS`."""
  flat = flatten(cell_cfg.to_dict())
  values = {key: flat[key] for key in _HPARAMS}
  values.update(cell.overrides)
  values['select.method'] = cell.overrides.get('select.method', '')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
          for k, v in values.items()}


def lower_is_better(config: ml_collections.ConfigDict) -> list[str]:
  """The metric keys of the cells (NAME_NETWORK.SPLIT) where lower is better."""
  return [f'{name}_{network}.{split}' for name in config.evaluate.metrics
          if f'{name}_'.startswith(LOWER_IS_BETTER) for network in config.evaluate.networks
          for split in config.study.references]
