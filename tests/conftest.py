"""Shared fixtures: small real datasets, written in the real formats."""

import os

import pytest

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from real_transitions import random_policy_transitions  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def pen_random_npz(tmp_path_factory) -> str:
  """A plain .npz of 1,000 random-policy pen-binary-v0 transitions."""
  from iql_acme.data import save_npz  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('data') / 'pen_random.npz')
  save_npz(path, random_policy_transitions('pen-binary-v0', episodes=10))
  return path
