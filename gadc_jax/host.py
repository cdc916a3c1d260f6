"""Process settings that keep XLA's CPU steps out of the kernel.

XLA's CPU runtime allocates the temporaries of one execution as a single block: about 4.7 GB
for a DiT-S/2 train step at batch 32. glibc serves a block that large with a fresh mmap and
unmaps it on free, so every step page-faults and zero-fills all of it again, about 15% of
the step on a 2-core host (benchmarks/train_bench.py). Two settings stop that:

  * synchronous dispatch on the CPU, so that the block is allocated by the calling thread,
    from the main heap (the asynchronous dispatch threads have small heaps of their own and
    always fall back to mmap for it);
  * glibc's mmap switched off and its heap never trimmed, so a freed block stays mapped and
    the next step reuses it. Resident memory then stays at its peak; the jobs here are
    long-running and reach that peak on every step anyway.

main.py applies both before any computation; the train benchmark applies them to both sides.
"""

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
  """Make glibc serve every block from its heap and never return freed memory to the OS.

  Returns False, changing nothing, where the C library has no mallopt (not glibc).
  """
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c')).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  # A trim threshold of -1 turns trimming off (mallopt(3)).
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def configure_cpu_runtime() -> None:
  """Both settings of the module docstring; call before the first computation.

  Dispatch is synchronous only for single-device CPU computations; accelerators and
  multi-device CPU meshes keep XLA's asynchronous dispatch.
  """
  # Imported here so that the PyTorch side of the train benchmark, which must not load XLA,
  # can import this module for keep_freed_memory.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  keep_freed_memory()
