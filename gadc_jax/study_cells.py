"""The cells of a study as the report reads them: ROOT/study.json and ROOT/cells/*/cell.json.

A cell is one measured run (a row of results.csv); whatever produces cells (the study job,
the distillation pipeline) writes them in this format, and the report reads nothing else:

    ROOT/study.json           {'command', 'config', 'cells': [names in grid order],
                               'baseline_group', 'lower_is_better': [metric keys]}
    ROOT/cells/CELL/cell.json {'cell', 'group', 'family', 'budget', 'budget_value', 'seed',
                               'hparams', 'metrics', 'diagnostics', 'seconds', 'selection'}

CELL is the cell's name with '/' written 'per'. Reading checks every file and names the
first bad one in a one-line error; nothing here writes.
"""

import glob
import math
import os
from typing import Any, NamedTuple

from gadc_jax import artifacts

CELL_KEYS = ('cell', 'group', 'family', 'budget', 'budget_value', 'seed', 'hparams', 'metrics',
             'diagnostics', 'seconds', 'selection')
FAMILIES = ('method', 'ablation', 'reference')
_NUMBER_MAPS = ('metrics', 'diagnostics', 'seconds')

# Where study.json names no directions: metrics whose names start with these are better low.
LOWER_IS_BETTER_PREFIXES = ('fid', 'sfid', 'kid')


class Study(NamedTuple):
  root: str
  record: dict            # study.json
  cells: list[dict]       # cell.json of every cell found, in study.json's order first
  missing: list[str]      # cells study.json lists that have no cell.json (yet)

  @property
  def baseline_group(self) -> str:
    return self.record.get('baseline_group') or 'random'

  def lower_is_better(self, metric: str) -> bool:
    listed = self.record.get('lower_is_better')
    if listed is not None:
      return metric in listed
    return metric.startswith(LOWER_IS_BETTER_PREFIXES)


def study_path(root: str) -> str:
  return os.path.join(root, 'study.json')


def cell_folder(cell: str) -> str:
  return cell.replace('/', 'per')


def cell_path(root: str, cell: str) -> str:
  return os.path.join(root, 'cells', cell_folder(cell), 'cell.json')


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_cell(record: Any, path: str) -> dict:
  """`record` if it is a well-formed cell.json, else a one-line ValueError naming `path`."""
  if not isinstance(record, dict):
    raise ValueError(f'{path}: a cell must be a JSON object, got {type(record).__name__}')
  missing = [k for k in CELL_KEYS if k not in record]
  if missing:
    raise ValueError(f'{path} lacks the key(s) {", ".join(missing)} of a cell')
  if not isinstance(record['cell'], str) or not record['cell']:
    raise ValueError(f'{path}: "cell" must be a non-empty string, got {record["cell"]!r}')
  if os.path.basename(os.path.dirname(path)) != cell_folder(record['cell']):
    raise ValueError(f'{path} holds cell {record["cell"]!r}, whose folder would be '
                     f'{cell_folder(record["cell"])!r}')
  for key in ('group', 'budget'):
    if not isinstance(record[key], str) or not record[key]:
      raise ValueError(f'{path}: "{key}" must be a non-empty string, got {record[key]!r}')
  if record['family'] not in FAMILIES:
    raise ValueError(f'{path}: "family" must be one of {", ".join(FAMILIES)}, got '
                     f'{record["family"]!r}')
  if not _is_number(record['budget_value']) or not math.isfinite(record['budget_value']):
    raise ValueError(f'{path}: "budget_value" must be a finite number, got '
                     f'{record["budget_value"]!r}')
  if not isinstance(record['seed'], int) or isinstance(record['seed'], bool):
    raise ValueError(f'{path}: "seed" must be an integer, got {record["seed"]!r}')
  if not isinstance(record['selection'], str):
    raise ValueError(f'{path}: "selection" must be a string, got {record["selection"]!r}')
  if not isinstance(record['hparams'], dict) or any(
      isinstance(v, (dict, list)) for v in record['hparams'].values()):
    raise ValueError(f'{path}: "hparams" must be a flat object of scalar values')
  for key in _NUMBER_MAPS:
    if not isinstance(record[key], dict):
      raise ValueError(f'{path}: "{key}" must be an object of numbers')
    for name, value in record[key].items():
      if not _is_number(value):
        raise ValueError(f'{path}: {key}.{name} must be a number, got {value!r}')
  return record


def load_study(root: str) -> Study:
  """study.json and every cell.json of `root`, checked; FileNotFoundError / ValueError
  naming the file when one is missing or malformed, or when there are no cells."""
  record = artifacts.read_json(study_path(root))
  if not isinstance(record, dict) or not isinstance(record.get('cells', []), list):
    raise ValueError(f'{study_path(root)}: expected an object with a "cells" list')
  listed = list(record.get('cells', []))
  found, runs = {}, {}
  for path in sorted(glob.glob(os.path.join(root, 'cells', '*', 'cell.json'))):
    cell = check_cell(artifacts.read_json(path), path)
    run = (cell['group'], cell['budget'], cell['seed'])
    if run in runs:
      raise ValueError(f'{path} and {runs[run]} are both group {run[0]!r} at budget '
                       f'{run[1]!r} with seed {run[2]}; a group has one cell per budget and seed')
    runs[run] = path
    found[cell['cell']] = cell
  if not found:
    raise ValueError(f'no cells in {os.path.join(root, "cells")}: no CELL/cell.json there; '
                     'run the study first')
  order = [c for c in listed if c in found] + sorted(set(found) - set(listed))
  return Study(root, record, [found[c] for c in order], [c for c in listed if c not in found])


def budgets(cells: list[dict]) -> list[str]:
  """The budgets of `cells`, smallest budget_value first (ties by name)."""
  values = {c['budget']: c['budget_value'] for c in cells}
  return sorted(values, key=lambda b: (values[b], b))


def groups(cells: list[dict]) -> list[str]:
  """Group names in the order their first cell appears."""
  return list(dict.fromkeys(c['group'] for c in cells))


def metric_names(cells: list[dict], key: str = 'metrics') -> list[str]:
  """Every name of `key` ('metrics', 'diagnostics') that some cell has, sorted."""
  return sorted({name for c in cells for name in c[key]})


def values_by_seed(cells: list[dict], group: str, budget: str, key: str,
                   name: str) -> dict[int, float]:
  """{seed: value} of `key`.`name` over the cells of `group` at `budget` that have it;
  non-finite values are left out."""
  return {c['seed']: float(c[key][name]) for c in cells
          if c['group'] == group and c['budget'] == budget and name in c[key]
          and math.isfinite(c[key][name])}
