"""Where the program's nodes compute: a GPU learner, everything else on CPU.

With the JAX CUDA plugin installed (`make run GPU=1`, requirements-gpu.txt),
every process would otherwise initialise the GPU on its first JAX call, and
JAX preallocates 75% of GPU memory per process by default. So for Launchpad's
`local_mp` launch each node group gets its own environment:

* learner: the GPU, allocating as it goes (XLA_PYTHON_CLIENT_PREALLOCATE
  false) so that nothing else in its process (TensorFlow, imported through
  Reverb) is starved; TensorFlow may not grab the GPU's memory either;
* actors, evaluator, replay, counter: `JAX_PLATFORMS=cpu` and no visible CUDA
  device (`CUDA_VISIBLE_DEVICES=''`, for TensorFlow in Reverb too), so they
  never touch the GPU. Acting is one small forward pass per step: CPU is
  the right place for it.

Without the plugin JAX cannot use a GPU and `local_resources()` is empty:
every node runs exactly as before. `local_mt` runs all nodes as threads of
one process, which cannot have per-node environments: there the whole
program uses JAX's default device (the GPU when the plugin is installed).
Multi-machine launchers place nodes by their own resource specs.

Deliberately imports neither JAX nor Launchpad at module level: the launcher
must not initialise a GPU backend itself, and the env mapping is testable on
any install.
"""

import importlib.util
from typing import Dict, Mapping, Optional

LEARNER_GROUP = 'learner'
CPU_GROUPS = ('replay', 'counter', 'actor', 'evaluator')
# The jax[cuda12] plugin's import name (jax-cuda12-plugin wheel).
CUDA_PLUGIN_MODULE = 'jax_plugins.xla_cuda12'

CPU_NODE_ENV = {'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': ''}
GPU_LEARNER_ENV = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
                   'TF_FORCE_GPU_ALLOW_GROWTH': 'true'}


def cuda_plugin_installed() -> bool:
  """True when JAX's CUDA plugin is importable (checked without importing JAX)."""
  try:
    return importlib.util.find_spec(CUDA_PLUGIN_MODULE) is not None
  except ModuleNotFoundError:  # No `jax_plugins` namespace at all.
    return False


def node_environments(gpu_learner: bool) -> Dict[str, Dict[str, str]]:
  """Extra environment variables per node group ({} without a GPU learner)."""
  if not gpu_learner:
    return {}
  envs = {group: dict(CPU_NODE_ENV) for group in CPU_GROUPS}
  envs[LEARNER_GROUP] = dict(GPU_LEARNER_ENV)
  return envs


def local_resources(gpu_learner: Optional[bool] = None) -> Mapping[str, object]:
  """`local_resources` for `lp.launch`: one `PythonProcess` per group.

  `gpu_learner` defaults to whether the CUDA plugin is installed. Launchpad
  reads it for `local_mp` only (and ignores it for the other launch types).
  """
  if gpu_learner is None:
    gpu_learner = cuda_plugin_installed()
  envs = node_environments(gpu_learner)
  if not envs:
    return {}
  # Launchpad 0.5 does not export PythonProcess as `lp.PythonProcess`.
  from launchpad.nodes.python import local_multi_processing  # pylint: disable=g-import-not-at-top
  return {group: local_multi_processing.PythonProcess(env=env)
          for group, env in envs.items()}
