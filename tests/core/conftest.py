"""Core tests: they import only jax, flax, optax, numpy and the IQL core.

Run without the 2022 stack, in `.venv-core` (newest JAX), with
`python -m pytest tests/core --confcutdir=tests/core` so that the suite's
tests/conftest.py (which imports the environments) is not loaded; `make test`
runs them there and, as part of `pytest tests`, in `.venv` too.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
