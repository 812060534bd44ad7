"""iql_acme.placement: the per-node environment of a GPU-learner launch.

No GPU here: these check the mapping Launchpad gets, that the CPU nodes'
settings really keep JAX on the CPU, and that without the CUDA plugin the
launch is unchanged.
"""

import json
import os
import subprocess
import sys

from launchpad.nodes.python import local_multi_processing

from iql_acme import placement
from iql_acme import program as program_lib
from iql_acme import run_setup


def _program_groups(tmp_path):
  config = run_setup.make_config('pen-binary-v0', offline_steps=10)
  dataset_fn = run_setup.make_offline_dataset_fn('pen-binary-v0', None, 45, 24)
  run = program_lib.RunConfig(env_name='pen-binary-v0',
                              workdir=str(tmp_path / 'run'), num_actors=2)
  return set(program_lib.make_program(config, dataset_fn, run).groups)


def test_gpu_learner_env_covers_every_node_group(tmp_path):
  envs = placement.node_environments(gpu_learner=True)
  assert set(envs) == _program_groups(tmp_path)
  for group, env in envs.items():
    if group == placement.LEARNER_GROUP:
      assert 'JAX_PLATFORMS' not in env  # The learner keeps the GPU.
      assert env['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'
    else:
      assert env['JAX_PLATFORMS'] == 'cpu'
      assert env['CUDA_VISIBLE_DEVICES'] == ''


def test_local_resources_are_launchpad_process_configs():
  resources = placement.local_resources(gpu_learner=True)
  assert set(resources) == set(placement.node_environments(True))
  for group, config in resources.items():
    assert isinstance(config, local_multi_processing.PythonProcess)
    assert dict(config.env) == placement.node_environments(True)[group]
  assert placement.local_resources(gpu_learner=False) == {}
  assert placement.node_environments(gpu_learner=False) == {}


def test_default_follows_the_cuda_plugin():
  # Without jax[cuda12]'s plugin (this machine) the launch is as before.
  plugin = placement.cuda_plugin_installed()
  assert (placement.local_resources() == {}) == (not plugin)


def test_cpu_node_env_keeps_jax_on_cpu():
  # Every CPU group has the same settings (checked above): one process.
  env = {**os.environ, **placement.node_environments(True)['actor']}
  code = ('import json, jax; print(json.dumps([jax.default_backend(), '
          '[d.platform for d in jax.devices()]]))')
  out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  backend, platforms = json.loads(out.strip().splitlines()[-1])
  assert backend == 'cpu' and set(platforms) == {'cpu'}
