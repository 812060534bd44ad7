"""iql-acme: offline-to-online Implicit Q-Learning on Acme, Reverb and Launchpad.

Importing this package is cheap and launches nothing: it installs the
Acme/JAX compatibility hook (see `compat.py`) and exposes the public API
lazily, so `import iql_acme` does not pull in TensorFlow or JAX.
"""

from iql_acme import compat as _compat

_compat.install_import_hook()

_EXPORTS = {
    'IQLBuilder': 'iql_acme.builder',
    'IQLConfig': 'iql_acme.config',
    'config_for_domain': 'iql_acme.config',
    'IQLLearner': 'iql_acme.learning',
    'make_networks': 'iql_acme.networks',
    'apply_policy_and_sample': 'iql_acme.networks',
    'make_behaviour_policy': 'iql_acme.networks',
    'make_evaluation_policy': 'iql_acme.networks',
    'make_environment': 'iql_acme.envs',
    'Transitions': 'iql_acme.types',
    'RewardTransform': 'iql_acme.types',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
