"""Compatibility shims: dm-acme 0.4.0 (Feb 2022) against JAX 0.4.30 and Reverb 0.7.2.

Why this exists: Acme 0.4.0 (and tensorflow-probability 0.16's JAX substrate)
refer to `jax.xla.Device`, `jax.xla.DeviceArray` and `jax.numpy.DeviceArray`,
names that JAX removed before the oldest jaxlib still on the registry (0.4.13).
Without them `import acme.jax.utils` fails. The modern equivalents are
`jax.Device` and `jax.Array`, so we alias the old names to those.

It must be in effect in *every* process that imports Acme, including the ones
Launchpad spawns (`process_entry.py` unpickles the node and may import Acme
before any module of ours). So `install_import_hook()` registers a tiny
meta-path hook that applies the aliases just before the first import of a
module that needs them; it is called from `iql_acme/__init__.py` and, through
a `.pth` file the Makefile writes into the virtualenv, at interpreter start-up.
Installing the hook is cheap: JAX itself is imported only when Acme is.

Second skew, `patch_reverb_client()`: Acme 0.4.0's Reverb adders call
`reverb.Client.trajectory_writer(..., get_signature_timeout_ms=...)`, a
keyword Reverb 0.7.2 (the build for TF 2.8 that Launchpad needs) does not
have. The shim drops it (it only bounds a wait for the table signature).
Called by `iql_acme.builder`, which every user of our adders imports.
"""

import importlib.abc
import sys
import types

# Top-level packages whose import needs the old JAX names.
_NEEDS_PATCH = frozenset({'acme', 'tensorflow_probability', 'rlax'})
_applied = False


def apply() -> None:
  """Aliases the JAX names that Acme 0.4.0 uses to their modern forms."""
  global _applied
  if _applied:
    return
  _applied = True
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if not hasattr(jax, 'xla'):
    jax.xla = types.SimpleNamespace()
  for name, value in (('Device', jax.Device), ('DeviceArray', jax.Array)):
    if not hasattr(jax.xla, name):
      setattr(jax.xla, name, value)
  if not hasattr(jnp, 'DeviceArray'):
    jnp.DeviceArray = jax.Array


class _PatchBeforeImport(importlib.abc.MetaPathFinder):
  """Applies the aliases before the first import of a package needing them."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname in _NEEDS_PATCH:
      apply()
      sys.meta_path.remove(self)
    return None  # Let the normal finders do the actual import.


def install_import_hook() -> None:
  """Makes sure `apply()` runs before Acme is imported in this process."""
  if _applied or any(isinstance(f, _PatchBeforeImport) for f in sys.meta_path):
    return
  if _NEEDS_PATCH & set(sys.modules):
    apply()  # Acme is already (partly) imported: patch right away.
  else:
    sys.meta_path.insert(0, _PatchBeforeImport())


def patch_reverb_client() -> None:
  """Lets Acme 0.4.0's adders open writers on a Reverb 0.7.2 client."""
  import inspect  # pylint: disable=g-import-not-at-top
  import reverb  # pylint: disable=g-import-not-at-top
  original = reverb.Client.trajectory_writer
  if 'get_signature_timeout_ms' in inspect.signature(original).parameters:
    return  # A Reverb that has the keyword, or already patched.

  def trajectory_writer(self, num_keep_alive_refs, *,
                        get_signature_timeout_ms=None, **kwargs):
    del get_signature_timeout_ms  # Not supported by this Reverb.
    return original(self, num_keep_alive_refs, **kwargs)
  reverb.Client.trajectory_writer = trajectory_writer
