"""D4RL's maze2d tasks rebuilt on gymnasium-robotics' PointMaze.

D4RL's maze2d needs mujoco_py. gymnasium-robotics' `PointMaze_{Medium,Large}-v3`
simulate the same point mass (same XML physics: 0.01 s Euler steps, gear 100,
damping 1, velocity clipped to [-5, 5]) in the same maze layouts, but in a
different frame (origin at the maze centre, x along columns, y up), with a goal
and start re-drawn every reset and a 0.45 success radius.
`D4RLMaze2D` makes them behave as D4RL's `maze2d-{medium,large}-v1`:

* Frame: observations (x, y, vx, vy) and actions are in D4RL's own frame, in
  which x runs along maze rows and y along columns and cell (row, col) lies at
  about (row, col); exactly, D4RL's particle body sits 0.2 beyond the cell
  centre in both axes. So D4RL's `WaypointController(env.maze_spec)` works on
  these observations unchanged. The mapping to the simulator is a rotation by
  90 degrees plus a shift, so the dynamics are untouched.
* Goal: fixed at D4RL's 'G' cell, target = (goal_row, goal_col) in this frame
  (medium: (6, 6), large: (7, 9)); `set_target()` moves it as D4RL's does.
* Reset distribution (D4RL's `reset_model`): a cell drawn uniformly among the
  open cells and the goal cell, position = cell + U(-0.1, 0.1) per axis,
  velocity ~ N(0, 0.1^2) per axis.
* Reward: 1.0 when within 0.5 of the target, else 0.0 (D4RL's sparse rule);
  never terminates; the registry sets D4RL's time limits (600 / 800 steps).
"""

from typing import NamedTuple, Optional, Sequence

import gymnasium
import numpy as np

# D4RL's layouts ('#' wall, 'O' open, 'G' goal; rows separated by '\').
MEDIUM_MAZE = ('########\\'
               '#OO##OO#\\'
               '#OO#OOO#\\'
               '##OOO###\\'
               '#OO#OOO#\\'
               '#O#OO#O#\\'
               '#OOO#OG#\\'
               '########')
LARGE_MAZE = ('############\\'
              '#OOOO#OOOOO#\\'
              '#O##O#O#O#O#\\'
              '#OOOOOO#OOO#\\'
              '#O####O###O#\\'
              '#OO#O#OOOOO#\\'
              '##O#O#O#O###\\'
              '#OO#OOO#OGO#\\'
              '############')


class Maze2dTask(NamedTuple):
  gymnasium_id: str
  maze_spec: str
  max_episode_steps: int


MAZE2D_TASKS = {
    'maze2d-medium-v1': Maze2dTask('PointMaze_Medium-v3', MEDIUM_MAZE, 600),
    'maze2d-large-v1': Maze2dTask('PointMaze_Large-v3', LARGE_MAZE, 800),
}

GOAL_RADIUS = 0.5         # D4RL's sparse reward: 1 within this distance.
_WALL, _OPEN, _GOAL = '#', 'O', 'G'
# D4RL's particle body sits at (1.2, 1.2) while cell (r, c) is centred at
# (r + 1, c + 1), so position (r, c) is this far beyond the centre of (r, c).
_D4RL_CELL_OFFSET = 0.2
_HALF_CELL = 0.5
_RESET_POSITION_NOISE = 0.1  # half-width of the uniform position noise
_RESET_VELOCITY_STD = 0.1


def parse_maze(maze_spec: str) -> Sequence[str]:
  """D4RL's maze string -> its rows."""
  return maze_spec.strip().split('\\')


def gymnasium_maze_map(maze_spec: str):
  """D4RL's maze string -> a gymnasium-robotics maze_map with one goal cell.

  Open cells are marked as reset cells ('r') and the goal as the only goal
  cell ('g'), so PointMaze never moves the goal when it is reached.
  """
  to_cell = {_WALL: 1, _OPEN: 'r', _GOAL: 'g'}
  return [[to_cell[tile] for tile in row] for row in parse_maze(maze_spec)]


class D4RLMaze2D(gymnasium.Wrapper):
  """PointMaze seen as D4RL's maze2d (see the module docstring)."""

  def __init__(self, env: gymnasium.Env, maze_spec: str):
    super().__init__(env)
    self._maze_spec = maze_spec
    rows = parse_maze(maze_spec)
    self._num_rows, self._num_cols = len(rows), len(rows[0])
    maze = env.unwrapped.maze
    if (maze.map_length, maze.map_width) != (self._num_rows, self._num_cols):
      raise ValueError(f'the PointMaze map is {maze.map_length}x'
                       f'{maze.map_width} but the D4RL maze is '
                       f'{self._num_rows}x{self._num_cols}; build it with '
                       'gymnasium_maze_map(maze_spec)')
    def cells(kind):
      return [(r, c) for r, row in enumerate(rows)
              for c, tile in enumerate(row) if tile == kind]
    goal_cells = cells(_GOAL)
    if len(goal_cells) != 1:
      raise ValueError(f'the maze needs exactly one goal cell {_GOAL!r}, '
                       f'found {len(goal_cells)}')
    self._goal_cell = goal_cells[0]
    # D4RL's `empty_and_goal_locations`: sorted open cells, then the goal.
    self._reset_cells = np.array(sorted(cells(_OPEN)) + goal_cells, np.float64)
    self._target = np.array(self._goal_cell, np.float64)
    self.observation_space = gymnasium.spaces.Box(
        -np.inf, np.inf, shape=(4,), dtype=np.float64)
    self.action_space = gymnasium.spaces.Box(
        -1.0, 1.0, shape=(2,), dtype=np.float32)

  # --- D4RL's frame <-> the simulator's frame ---------------------------------

  def sim_xy(self, xy) -> np.ndarray:
    """A position in D4RL's frame -> the simulator's (x, y)."""
    row = xy[0] + _D4RL_CELL_OFFSET
    col = xy[1] + _D4RL_CELL_OFFSET
    return np.array([col + _HALF_CELL - self._num_cols / 2,
                     self._num_rows / 2 - row - _HALF_CELL])

  def d4rl_xy(self, sim_xy) -> np.ndarray:
    """The simulator's (x, y) -> a position in D4RL's frame."""
    row = self._num_rows / 2 - _HALF_CELL - sim_xy[1]
    col = sim_xy[0] - _HALF_CELL + self._num_cols / 2
    return np.array([row, col]) - _D4RL_CELL_OFFSET

  # --- D4RL's MazeEnv interface -----------------------------------------------

  @property
  def maze_spec(self) -> str:
    """D4RL's maze string (what `WaypointController` takes)."""
    return self._maze_spec

  @property
  def goal_cell(self):
    """(row, col) of the maze's goal cell."""
    return self._goal_cell

  @property
  def target(self) -> np.ndarray:
    """The current target position in D4RL's frame (D4RL's `_target`)."""
    return self._target.copy()

  def set_target(self, target_location=None):
    """Moves the target; None draws it as D4RL does (random cell + noise)."""
    if target_location is None:
      rng = self.env.unwrapped.np_random
      cell = self._reset_cells[rng.integers(len(self._reset_cells))]
      target_location = cell + rng.uniform(
          -_RESET_POSITION_NOISE, _RESET_POSITION_NOISE, size=2)
    self._target = np.array(target_location, np.float64).reshape(2)
    self._show_target()

  def set_state(self, qpos, qvel):
    """Sets position and velocity, both given in D4RL's frame."""
    qpos, qvel = np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)
    self.env.unwrapped.point_env.set_state(
        self.sim_xy(qpos), np.array([qvel[1], -qvel[0]]))

  def observation(self) -> np.ndarray:
    """The current (x, y, vx, vy) in D4RL's frame."""
    data = self.env.unwrapped.point_env.data
    qvel = data.qvel
    return np.concatenate([self.d4rl_xy(data.qpos), [-qvel[1], qvel[0]]])

  # --- gymnasium API -------------------------------------------------------

  def reset(self, *, seed: Optional[int] = None, options=None):
    if options:
      raise ValueError('maze2d reset takes no options; call set_target() or '
                       'set_state() instead')
    self.env.reset(seed=seed)  # Seeds the RNG; its own start is replaced.
    rng = self.env.unwrapped.np_random
    cell = self._reset_cells[rng.integers(len(self._reset_cells))]
    qpos = cell + rng.uniform(-_RESET_POSITION_NOISE, _RESET_POSITION_NOISE,
                              size=2)
    qvel = rng.normal(size=2) * _RESET_VELOCITY_STD
    self._show_target()
    self.set_state(qpos, qvel)
    observation = self.observation()
    return observation, self._info(observation, {})

  def step(self, action):
    action = np.asarray(action)
    # D4RL's x force pushes along rows, which is the simulator's -y.
    sim_action = np.array([action[1], -action[0]], np.float32)
    _, _, _, truncated, info = self.env.step(sim_action)
    observation = self.observation()
    info = self._info(observation, info)
    reward = 1.0 if info['goal_achieved'] else 0.0
    # D4RL's maze2d never terminates; only the time limit ends an episode.
    return observation, reward, False, truncated, info

  def _info(self, observation, info):
    reached = bool(
        np.linalg.norm(observation[:2] - self._target) <= GOAL_RADIUS)
    info['goal_achieved'] = reached
    info['success'] = reached  # PointMaze's own flag uses a 0.45 radius.
    return info

  def _show_target(self):
    # Keeps PointMaze's goal (and its rendered site) on our target.
    maze_env = self.env.unwrapped
    maze_env.goal = self.sim_xy(self._target)
    maze_env.update_target_site_pos()
