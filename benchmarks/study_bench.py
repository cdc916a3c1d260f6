"""Cost of the study's cells: runs the shared stages and a few cells of a study config in a
fresh workdir, prints each stage's seconds, cells per hour and the whole grid's projection.

    python benchmarks/study_bench.py [--config configs/digits_study.py]
        [--cells random-10%-seed0,gadc-10%-seed0] [--workdir DIR] [--data_dir DIR]

--cells names cells of the config's grid (default: its first cell). The projection is the
shared stages plus every cell of the grid at the mean cost of the cells timed, per method:
a cell of a method not timed costs the mean of those timed. Each cell runs in the same
process as the study job runs them, with its compilation cache (config.study.compilation_cache):
the first cell of a shape pays the compilation, later ones read it from WORKDIR/jax_cache.
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
  timed = {}
  with study_job.compilation_cache(cache) if cache else contextlib.nullcontext():
    t0 = time.time()
    for job, job_config in study_job.shared_stages(config, grid):
      jobs.run(job, job_config, workdir)
    shared_s = time.time() - t0
    for name in names:
      timed[name] = study_job.run_cell(config, workdir, by_name[name])['seconds']
  mean_total = sum(s['total'] for s in timed.values()) / len(timed)
  per_group = {}
  for name, seconds in timed.items():
    per_group.setdefault(by_name[name].group, []).append(seconds['total'])
  projected = shared_s + sum(
      sum(per_group[c.group]) / len(per_group[c.group]) if c.group in per_group else mean_total
      for c in grid)
  print(f'shared stages: {shared_s:.1f} s ({workdir})')
  stages = ('select', 'train', 'sample', 'evaluate', 'cas', 'total')
  print(f'{"cell":<28}' + ''.join(f'{s:>10}' for s in stages))
  for name, seconds in timed.items():
    print(f'{name:<28}' + ''.join(f'{seconds.get(s, 0.0):>10.1f}' for s in stages))
  print(f'{3600 / mean_total:.1f} cells per hour; the grid of {len(grid)} cells: '
        f'~{projected / 60:.1f} min projected')
  print(json.dumps({
      'benchmark': 'study', 'config': args.config, 'device': str(jax.devices()[0]),
      'shared_seconds': shared_s, 'cells': timed, 'cells_per_hour': 3600 / mean_total,
      'grid_cells': len(grid), 'projected_minutes': projected / 60}))


if __name__ == '__main__':
  main()
