"""Generates a STAND-IN maze2d dataset (D4RL HDF5) on gymnasium-robotics.

Not the published D4RL file: D4RL's recipe (scripts/generation/
generate_maze2d_datasets.py) replayed on `iql_acme.envs`' maze2d, which is
gymnasium-robotics' PointMaze seen in D4RL's frame. One long trajectory that
never resets: the waypoint controller (`iql_acme.standin.maze_waypoints`)
drives to a random target cell with Gaussian action noise and, once there (or
after `max_episode_steps` without getting there), to a new one. `timeouts`
mark every `max_episode_steps` steps; `terminals` are all False; `rewards` are
the environment's sparse ones for its FIXED evaluation goal (1 within 0.5),
as in D4RL's released files, while `infos/goal` holds the controller's target.

  python experiments/make_maze2d.py --layout medium --num_steps 200000 \
      --out out/maze2d/maze2d-medium-v1.hdf5
"""

import argparse
import json
import os
import sys
import time
from typing import Tuple

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from tqdm import tqdm  # pylint: disable=g-import-not-at-top

from iql_acme import envs  # pylint: disable=g-import-not-at-top
from iql_acme.standin import maze_waypoints  # pylint: disable=g-import-not-at-top

LAYOUTS = ('medium', 'large')
# D4RL's generator adds N(0, 0.5^2) to every action with --noisy.
DEFAULT_ACTION_NOISE = 0.5
# D4RL's set_target: a random open cell plus U(-0.1, 0.1) per axis.
TARGET_JITTER = 0.1


def env_name(layout: str) -> str:
  return f'maze2d-{layout}-v1'


def generate(layout: str, num_steps: int, seed: int = 0,
             action_noise: float = DEFAULT_ACTION_NOISE,
             show_progress: bool = True) -> Tuple[dict, dict]:
  """D4RL arrays of one never-reset trajectory of `num_steps` steps, and stats."""
  name = env_name(layout)
  env = envs.make_gymnasium_env(name, seed=seed)
  max_steps = envs.max_episode_steps(name)
  rng = np.random.default_rng(seed)
  controller = maze_waypoints.WaypointController(env.maze_spec, rng)
  cells = np.array(controller.cells, np.float64)

  def new_target():
    cell = cells[rng.integers(len(cells))]
    return cell + rng.uniform(-TARGET_JITTER, TARGET_JITTER, size=2)

  data = {
      'observations': np.zeros((num_steps, 4), np.float32),
      'actions': np.zeros((num_steps, 2), np.float32),
      'rewards': np.zeros(num_steps, np.float32),
      'terminals': np.zeros(num_steps, bool),
      'timeouts': np.zeros(num_steps, bool),
      'infos/goal': np.zeros((num_steps, 2), np.float32),
      'infos/qpos': np.zeros((num_steps, 2), np.float32),
      'infos/qvel': np.zeros((num_steps, 2), np.float32),
  }
  observation, _ = env.reset(seed=seed)
  target, steps_on_target, targets_reached = new_target(), 0, 0
  for t in tqdm(range(num_steps), desc=name, unit='step', mininterval=2.0,
                disable=not show_progress, file=sys.stdout):
    action, reached = controller.action(observation[:2], observation[2:],
                                        target)
    if reached or steps_on_target >= max_steps:
      targets_reached += reached
      target, steps_on_target = new_target(), 0
      action, _ = controller.action(observation[:2], observation[2:], target)
    action = np.clip(action + rng.normal(0.0, action_noise, 2), -1.0, 1.0)
    data['observations'][t] = observation
    data['actions'][t] = action
    data['infos/goal'][t] = target
    data['infos/qpos'][t] = observation[:2]
    data['infos/qvel'][t] = observation[2:]
    # Stepping past the wrapper's time limit is fine: nothing resets.
    observation, reward, _, _, _ = env.step(action)
    data['rewards'][t] = reward
    data['timeouts'][t] = (t + 1) % max_steps == 0
    steps_on_target += 1
  stats = {'targets_reached': targets_reached, 'eval_target': env.target,
           'maze_spec': env.maze_spec,
           # Where cell (0, 0)'s centre lies in D4RL's frame (about -0.2, -0.2:
           # D4RL's positions sit 0.2 beyond their cell's centre).
           'cell_origin': env.d4rl_xy(
               env.unwrapped.maze.cell_rowcol_to_xy(np.zeros(2)))}
  return data, stats


def write_hdf5(file: str, data: dict, attrs: dict):
  """D4RL's layout (gzip like D4RL's generator); written then renamed."""
  os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
  tmp = file + '.tmp'
  with h5py.File(tmp, 'w') as h5file:
    for key, array in data.items():
      h5file.create_dataset(key, data=array, compression='gzip')
    for key, value in attrs.items():
      h5file.attrs[key] = value
  os.replace(tmp, file)


def plot_coverage(file: str, data: dict, stats: dict, title: str):
  """Visited positions over the maze walls (D4RL frame: x = row, y = col)."""
  maze_spec, goal, origin = (stats['maze_spec'], stats['eval_target'],
                             stats['cell_origin'])
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = maze_spec.strip().split('\\')
  walls = np.array([[tile == maze_waypoints.WALL for tile in row]
                    for row in rows], float)
  fig, ax = plt.subplots(figsize=(6, 6 * len(rows) / len(rows[0])))
  ax.imshow(walls.T, origin='lower', cmap='Greys', alpha=0.5,
            extent=(origin[0] - 0.5, origin[0] + len(rows) - 0.5,
                    origin[1] - 0.5, origin[1] + len(rows[0]) - 0.5))
  xy = data['observations'][:, :2]
  ax.plot(xy[:, 0], xy[:, 1], ',', alpha=0.3)
  ax.add_patch(plt.Circle(goal, envs.maze2d.GOAL_RADIUS, color='red',
                          fill=False, label='eval goal (reward 1)'))
  ax.set_xlabel('x (maze row)')
  ax.set_ylabel('y (maze column)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc='upper right')
  fig.tight_layout()
  fig.savefig(file, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--layout', choices=LAYOUTS, required=True)
  parser.add_argument('--num_steps', type=int, default=200_000)
  parser.add_argument('--out', required=True, help='the .hdf5 file to write')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--action_noise', type=float,
                      default=DEFAULT_ACTION_NOISE)
  args = parser.parse_args(argv)
  start = time.time()
  data, stats = generate(args.layout, args.num_steps, args.seed,
                         args.action_noise)
  seconds = time.time() - start
  attrs = {
      'standin': 'GENERATED with experiments/make_maze2d.py (D4RL recipe on '
                 'gymnasium-robotics PointMaze); not the published D4RL file',
      'env_name': env_name(args.layout), 'seed': args.seed,
      'action_noise': args.action_noise,
      'eval_target': stats['eval_target'],
      'targets_reached': stats['targets_reached'],
  }
  write_hdf5(args.out, data, attrs)
  stem = os.path.splitext(args.out)[0]
  summary = {key: (value.tolist() if isinstance(value, np.ndarray) else value)
             for key, value in attrs.items()}
  summary.update(
      num_steps=args.num_steps, wall_seconds=seconds,
      reward_steps=int(data['rewards'].sum()),
      timeouts=int(data['timeouts'].sum()),
      file_megabytes=os.path.getsize(args.out) / 1e6)
  with open(stem + '.json', 'w') as f:
    json.dump(summary, f, indent=2)
  plot_coverage(stem + '.png', data, stats,
                f'stand-in {env_name(args.layout)}: {args.num_steps} steps '
                '(generated)')
  print(f'{env_name(args.layout)}: {args.num_steps} steps in {seconds:.1f}s '
        f'({args.num_steps / seconds:.0f} steps/s); controller targets reached '
        f'{stats["targets_reached"]}; steps with reward 1: '
        f'{int(data["rewards"].sum())} ({data["rewards"].mean():.3f}); '
        f'{int(data["timeouts"].sum())} timeouts; '
        f'{os.path.getsize(args.out) / 1e6:.2f} MB -> {args.out}')


if __name__ == '__main__':
  main()
