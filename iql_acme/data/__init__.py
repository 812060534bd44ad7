"""Offline datasets -> `iql_acme.types.Transitions`, with the paper's
per-domain reward transform (appendix B) and action clipping.

Formats: D4RL HDF5 (by name or path, downloaded when missing), AWAC's
dexterous-hand .npy files, local Minari datasets and a plain transition .npz.
"""

from iql_acme.data.download import d4rl_dataset_path, download_d4rl
from iql_acme.data.errors import DatasetError
from iql_acme.data.loading import load_dataset, read_source
from iql_acme.data.npz import save_npz
from iql_acme.data.transforms import (ACTION_CLIP_LIMIT, clip_actions,
                                      reward_transform_for,
                                      trajectory_returns)

__all__ = [
    'ACTION_CLIP_LIMIT', 'DatasetError', 'clip_actions', 'd4rl_dataset_path',
    'download_d4rl', 'load_dataset', 'read_source', 'reward_transform_for',
    'save_npz', 'trajectory_returns',
]
