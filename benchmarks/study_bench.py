"""Cost of the study's cells: runs the shared stages and a few cells of a study config in a
fresh workdir, prints each stage's seconds, cells per hour and the whole grid's projection.

    python benchmarks/study_bench.py [--config configs/digits_study.py]
        [--cells random-10%-seed0,gadc-10%-seed0] [--workdir DIR] [--data_dir DIR]

--cells names cells of the config's grid (default: its first cell). Their selections, then
the cells, run as the study job runs them: in config.study.workers threads, with its
compilation cache (config.study.compilation_cache), so the first cell of a shape pays the
compilation and later ones read it from WORKDIR/jax_cache. Cells per hour is the cells
timed over their wall-clock time. The projection is the shared stages, plus every distinct
selection of the grid at the seconds its method's timed selections took (the mean of those
timed for a method not timed) over the workers, plus every cell at the timed cells' mean
wall-clock time.
The last line is one JSON object.
"""

import argparse
import contextlib
import json
import os
import runpy
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config(spec: str):
  """PATH[:ARG] -> get_config(ARG) of the config file PATH, as --config= reads it."""
  path, _, arg = spec.partition(':')
  return runpy.run_path(path)['get_config'](arg or None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/digits_study.py')
  parser.add_argument('--cells', default='')
  parser.add_argument('--workdir', default='')
  parser.add_argument('--data_dir', default='')
  args = parser.parse_args()

  from gadc_jax import host  # pylint: disable=g-import-not-at-top
  host.configure_cpu_runtime()  # as main.py does.
  import jax  # pylint: disable=g-import-not-at-top
  from gadc_jax import jobs  # pylint: disable=g-import-not-at-top
  from gadc_jax import study  # pylint: disable=g-import-not-at-top
  from gadc_jax.jobs import study as study_job  # pylint: disable=g-import-not-at-top

  config = _load_config(args.config)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  study.check_config(config)
  grid = study.cells(config)
  by_name = {cell.name: cell for cell in grid}
  names = args.cells.split(',') if args.cells else [grid[0].name]
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise SystemExit(f'--cells: {", ".join(unknown)} not in the grid of {args.config}')
  workdir = args.workdir or tempfile.mkdtemp(prefix='study_bench-')

  cache = os.path.join(workdir, 'jax_cache') if config.study.compilation_cache else ''
  workers = config.study.workers
  cells = [by_name[name] for name in names]
  made = study.selections(config, cells)
  selection_s, timed = {}, {}

  def select(i: int) -> None:
    t0 = time.time()
    jobs.run('select', made[i], workdir)
    selection_s[made[i].select.name] = (made[i].select.method, time.time() - t0)

  def cell(i: int) -> None:
    timed[cells[i].name] = study_job.run_cell(config, workdir, cells[i])['seconds']

  with study_job.compilation_cache(cache) if cache else contextlib.nullcontext():
    t0 = time.time()
    for job, job_config in study_job.shared_stages(config, grid):
      jobs.run(job, job_config, workdir)
    shared_s = time.time() - t0
    study_job.in_workers(select, range(len(made)), workers, 'selection')
    t0 = time.time()
    study_job.in_workers(cell, range(len(cells)), workers, 'cell')
    cells_s = time.time() - t0
  by_method = {}
  for method, seconds in selection_s.values():
    by_method.setdefault(method, []).append(seconds)
  mean_selection = sum(s for _, s in selection_s.values()) / max(len(selection_s), 1)
  selections_s = sum(
      sum(by_method[c.select.method]) / len(by_method[c.select.method])
      if c.select.method in by_method else mean_selection
      for c in study.selections(config, grid)) / workers
  cell_s = cells_s / len(cells)
  projected = shared_s + selections_s + cell_s * len(grid)
  print(f'shared stages: {shared_s:.1f} s ({workdir}); {workers} workers')
  for name, (method, seconds) in selection_s.items():
    print(f'selection {name} ({method}): {seconds:.1f} s')
  stages = ('select', 'train', 'sample', 'evaluate', 'cas', 'total')
  print(f'{"cell":<28}' + ''.join(f'{s:>10}' for s in stages))
  for name, seconds in timed.items():
    print(f'{name:<28}' + ''.join(f'{seconds.get(s, 0.0):>10.1f}' for s in stages))
  print(f'{3600 / cell_s:.1f} cells per hour ({len(cells)} cells in {cells_s:.1f} s); the grid '
        f'of {len(grid)} cells: ~{projected / 60:.1f} min projected')
  print(json.dumps({
      'benchmark': 'study', 'config': args.config, 'device': str(jax.devices()[0]),
      'workers': workers, 'shared_seconds': shared_s,
      'selection_seconds': {k: v for k, (_, v) in selection_s.items()}, 'cells': timed,
      'cells_seconds': cells_s, 'cells_per_hour': 3600 / cell_s, 'grid_cells': len(grid),
      'projected_minutes': projected / 60}))


if __name__ == '__main__':
  main()
