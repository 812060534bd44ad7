"""D4RL HDF5 files, read with the semantics of `d4rl.qlearning_dataset`."""

from typing import Mapping

from absl import logging
import numpy as np

from iql_acme.data import validate
from iql_acme.data.episodes import episode_ends_from
from iql_acme.data.errors import dataset_error
from iql_acme.data.hdf5_files import open_hdf5, read_array
from iql_acme.types import Transitions

REQUIRED_KEYS = ('observations', 'actions', 'rewards', 'terminals')
# `infos/*` and `metadata/*` may be present too; IQL does not use them.
OPTIONAL_KEYS = ('timeouts', 'next_observations')
_FIX_KEYS = ('pass a D4RL-format HDF5 file (observations, actions, rewards, '
             'terminals; optional timeouts, next_observations)')


def read_d4rl_hdf5(path: str) -> Transitions:
  """A D4RL HDF5 file as Transitions (raw rewards, unclipped actions)."""
  with open_hdf5(path) as h5file:
    validate.require_keys(list(h5file.keys()), REQUIRED_KEYS, path, _FIX_KEYS)
    data = {key: read_array(h5file, key, path)
            for key in REQUIRED_KEYS + OPTIONAL_KEYS if key in h5file}
  return qlearning_transitions(data, path)


def qlearning_transitions(data: Mapping[str, np.ndarray],
                          source) -> Transitions:
  """D4RL arrays (one row per step) to transitions.

  With `next_observations` every row is a real transition and is kept.
  Without it, s' is the next row's observation, as in
  `d4rl.qlearning_dataset(env, dataset)` with `terminate_on_end=False`: the
  step flagged by `timeouts` is dropped (its s' would be the next episode's
  first state) and so is the file's last row. Either way a time-out is not a
  terminal: only `terminals` sets the discount to 0.
  """
  steps = {
      'observations': validate.as_matrix(data['observations'], 'observations',
                                         source),
      'actions': validate.as_matrix(data['actions'], 'actions', source),
      'rewards': validate.as_vector(data['rewards'], 'rewards', source),
      'terminals': validate.as_vector(data['terminals'], 'terminals', source,
                                      bool),
  }
  if 'timeouts' in data:
    steps['timeouts'] = validate.as_vector(data['timeouts'], 'timeouts',
                                           source, bool)
  if 'next_observations' in data:
    steps['next_observations'] = validate.as_matrix(
        data['next_observations'], 'next_observations', source)
  validate.check_same_length(steps, source)
  validate.check_finite(steps, source)
  obs, terminals = steps['observations'], steps['terminals']
  timeouts = steps.get('timeouts')

  if 'next_observations' in steps:
    next_obs = steps['next_observations']
    if next_obs.shape != obs.shape:
      raise dataset_error(source, f'next_observations {next_obs.shape} and '
                          f'observations {obs.shape} differ in shape',
                          'both must be [N, obs_dim]')
    flags = [terminals] + ([timeouts] if timeouts is not None else [])
    return Transitions(
        observations=obs, actions=steps['actions'], rewards=steps['rewards'],
        discounts=1.0 - terminals.astype(np.float32),
        next_observations=next_obs,
        episode_ends=episode_ends_from(obs, next_obs, *flags))

  n = len(obs)
  if timeouts is None:
    logging.warning(
        '%s has neither timeouts nor next_observations: time-limit cuts '
        'cannot be found, so only terminals split episodes.', source)
    kept = np.arange(max(n - 1, 0))
  else:
    kept = np.flatnonzero(~timeouts[:n - 1])
  # A kept row ends its trajectory at a terminal, or where the next kept row
  # is not its successor (a dropped time-out step) or there is none.
  continues = np.zeros(len(kept), dtype=bool)
  continues[:-1] = kept[1:] == kept[:-1] + 1
  return Transitions(
      observations=obs[kept], actions=steps['actions'][kept],
      rewards=steps['rewards'][kept],
      discounts=1.0 - terminals[kept].astype(np.float32),
      next_observations=obs[kept + 1],
      episode_ends=terminals[kept] | ~continues)
