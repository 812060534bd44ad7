"""The package's import hook (iql_acme/compat.py) on whatever JAX is installed.

`import iql_acme` installs a hook for the old JAX names Acme 0.4.0 needs; on
the newest JAX (.venv-core) it must neither break importing the core nor the
names JAX has now.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str) -> str:
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': REPO}).stdout


def test_import_hook_is_cheap_and_leaves_the_core_working():
  out = _run(
      'import sys\n'
      'import iql_acme\n'
      "print('jax' in sys.modules)\n"  # The hook alone imports no JAX.
      'from iql_acme import networks, training\n'
      'from iql_acme.config import IQLConfig\n'
      'import jax\n'
      'net = networks.make_networks(networks.spec_from_dims(3, 2),\n'
      '                             IQLConfig(hidden_dims=(8,)))\n'
      'opt = training.make_optimizers(IQLConfig())\n'
      'state = training.init_training_state(net, opt, jax.random.PRNGKey(0))\n'
      'print(int(state.steps))\n')
  jax_at_import, steps = out.split()
  assert jax_at_import == 'False' and steps == '0'


def test_compat_aliases_are_the_modern_names():
  out = _run(
      'import jax, jax.numpy as jnp\n'
      'from iql_acme import compat\n'
      'compat.apply()\n'
      'print(jax.xla.Device is jax.Device, jax.xla.DeviceArray is jax.Array,'
      ' jnp.DeviceArray is jax.Array)\n')
  assert out.split() == ['True', 'True', 'True']
