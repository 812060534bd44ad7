r"""The paper's toy U-maze (section 5.1, Figure 2): one-step evaluation vs IQL.

The maze (`LAYOUT`, 36 free cells; S start, G goal, # wall) is a U: two arms
joined at the bottom. The shortest path from S to G has 17 moves.

    ##########
    #S.####.G#
    #..####..#
    #..####..#
    #..####..#
    #..####..#
    #........#
    #........#
    ##########

Dynamics. Actions are up, down, left and right. With probability
`SLIP_PROB` = 0.25 the agent goes to a random state instead of the commanded
one; we read "random state" as a uniformly random *neighbouring* state, i.e.
the move of a uniformly random action (which may be the commanded one, and
where a move hits a wall the agent stays put). Entering G pays `GOAL_REWARD`
= 10 and ends the episode (G is terminal, its value 0); every other
transition pays 0. Discount 0.9. The optimal V is computed by value iteration
on exactly these dynamics.

Data. 1 trajectory of the optimal policy and 99 of uniformly random actions,
all from S, each `HORIZON` = 100 steps long or shorter when it enters G (a
time-out is not terminal: its mask stays 1). About 9,800 transitions; with
seeds 0-2 every non-goal cell is visited (the rarest once or twice), but
only a few random walks reach G, so one-step's V^beta is ~0 far from G.

Learning. V(s) and twin Q(s, .) (4 outputs, one per action) are small Flax
MLPs on a one-hot encoding of the cell, trained with `iql_acme.losses`
exactly as Algorithm 1 (V on eq. 5 against the target Q's min head, Q on
eq. 6, Polyak target). One-step policy evaluation is the same learner with
tau = 0.5 (SARSA: V is the behaviour policy's value); IQL uses tau = 0.95.
The policy extracted from each is greedy, argmax_a min_i Q_i(s, a): every
cell's data holds all four actions (random actions), so the argmax stays in
the data's support, and it is the limit of AWR as its temperature grows.

Outputs: `DIR/toy_umaze.png` (Figure 2's panels) and `DIR/toy_umaze.json`
with, per method, `v_corr` and `v_mae` of the learned V against the optimal
V over the free non-goal cells (G is terminal: no action is ever taken
there), and `success`, the fraction of `NUM_ROLLOUTS` stochastic episodes of
the extracted policy from S reaching G within `HORIZON` steps.

Usage: python experiments/toy_umaze.py --out DIR [--seed N] [--quick]
"""

import argparse
import json
import os
import sys
import time
from typing import NamedTuple, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import optax

from iql_acme import losses
from iql_acme import tabular
# pylint: enable=g-import-not-at-top,wrong-import-position

LAYOUT = """
##########
#S.####.G#
#..####..#
#..####..#
#..####..#
#..####..#
#........#
#........#
##########
"""
WALL, START, GOAL = '#', 'S', 'G'
MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])  # up, down, left, right
SLIP_PROB = 0.25
GOAL_REWARD = 10.
DISCOUNT = 0.9
HORIZON = 100            # steps per dataset trajectory and per evaluation
NUM_OPTIMAL_TRAJECTORIES = 1
NUM_RANDOM_TRAJECTORIES = 99
NUM_ROLLOUTS = 1000
ONESTEP_EXPECTILE = 0.5  # SARSA-style evaluation of the behaviour policy
IQL_EXPECTILE = 0.95     # the paper's value for this figure
HIDDEN_DIMS = (64, 64)
LEARNING_RATE = 3e-4     # Adam, as appendix B
TARGET_UPDATE_RATE = 0.005
BATCH_SIZE = 256
TRAIN_STEPS = 30_000
STEPS_PER_CALL = 1_000   # gradient steps per jitted lax.scan
QUICK = dict(train_steps=400, steps_per_call=200, num_rollouts=100)


class UMaze:
  """The gridworld: cells are indices into `cells`, the free (row, col)s."""

  def __init__(self, layout: str = LAYOUT):
    self.grid = np.array([list(row) for row in layout.strip().splitlines()])
    self.cells = np.argwhere(self.grid != WALL)
    index = {tuple(cell): i for i, cell in enumerate(self.cells)}
    self.start = index[tuple(np.argwhere(self.grid == START)[0])]
    self.goal = index[tuple(np.argwhere(self.grid == GOAL)[0])]
    # next_cell[s, a]: where action a leads without slipping (walls: stay).
    self.next_cell = np.array([[index.get(tuple(cell + move), s)
                                for move in MOVES]
                               for s, cell in enumerate(self.cells)])

  @property
  def num_states(self) -> int:
    return len(self.cells)

  @property
  def num_actions(self) -> int:
    return len(MOVES)

  def step(self, rng, states, actions):
    """Vectorised stochastic step: (next_states, rewards, terminal)."""
    slipped = rng.random(states.shape) < SLIP_PROB
    random_actions = rng.integers(self.num_actions, size=states.shape)
    next_states = self.next_cell[states, np.where(slipped, random_actions,
                                                  actions)]
    terminal = next_states == self.goal
    return next_states, GOAL_REWARD * terminal, terminal

  def mdp(self):
    """(transitions, rewards) in `iql_acme.tabular`'s convention."""
    slip = np.full(self.num_actions, SLIP_PROB / self.num_actions)
    action_probs = (1. - SLIP_PROB) * np.eye(self.num_actions) + slip
    transitions = np.zeros((self.num_states, self.num_actions,
                            self.num_states))
    for s in range(self.num_states):
      for executed, next_s in enumerate(self.next_cell[s]):
        transitions[s, :, next_s] += action_probs[:, executed]
    rewards = GOAL_REWARD * transitions[:, :, self.goal]
    transitions[:, :, self.goal] = 0.  # entering G terminates
    transitions[self.goal] = 0.
    rewards[self.goal] = 0.
    return transitions, rewards

  def to_grid(self, values):
    """Per-cell values on the layout's grid, NaN on walls."""
    grid = np.full(self.grid.shape, np.nan)
    grid[tuple(self.cells.T)] = values
    return grid


class Dataset(NamedTuple):
  states: np.ndarray
  actions: np.ndarray
  rewards: np.ndarray
  next_states: np.ndarray
  masks: np.ndarray


def collect_dataset(maze: UMaze, rng, optimal_actions) -> Dataset:
  """Trajectories from S: the optimal ones first, then uniformly random."""
  num_optimal = NUM_OPTIMAL_TRAJECTORIES
  num_episodes = num_optimal + NUM_RANDOM_TRAJECTORIES
  states = np.full(num_episodes, maze.start)
  alive = np.ones(num_episodes, bool)
  steps = []
  for _ in range(HORIZON):
    actions = rng.integers(maze.num_actions, size=num_episodes)
    actions[:num_optimal] = optimal_actions[states[:num_optimal]]
    next_states, rewards, terminal = maze.step(rng, states, actions)
    steps.append(Dataset(states[alive], actions[alive], rewards[alive],
                         next_states[alive], 1. - terminal[alive]))
    alive &= ~terminal
    states = next_states
  return Dataset(*map(np.concatenate, zip(*steps)))


def success_rate(maze: UMaze, rng, policy_actions, num_rollouts: int):
  """Fraction of episodes from S that enter G within HORIZON steps."""
  states = np.full(num_rollouts, maze.start)
  reached = np.zeros(num_rollouts, bool)
  for _ in range(HORIZON):
    states, _, terminal = maze.step(rng, states, policy_actions[states])
    reached |= terminal
    states = np.where(reached, maze.goal, states)
  return float(reached.mean())


class MLP(nn.Module):
  hidden_dims: Sequence[int]
  out_dim: int

  @nn.compact
  def __call__(self, x):
    for dim in self.hidden_dims:
      x = nn.relu(nn.Dense(dim)(x))
    return nn.Dense(self.out_dim)(x)


class TwinQ(nn.Module):
  """Two Q heads, each Q(s, .) with one output per action: [2, ..., A]."""
  num_actions: int

  @nn.compact
  def __call__(self, x):
    return jnp.stack([MLP(HIDDEN_DIMS, self.num_actions)(x) for _ in range(2)])


class TrainState(NamedTuple):
  v: dict
  q: dict
  target_q: dict
  v_opt: optax.OptState
  q_opt: optax.OptState


def train(maze: UMaze, dataset: Dataset, expectile: float, seed: int,
          num_steps: int, steps_per_call: int, name: str):
  """Algorithm 1's TD learning; returns (V [S], min-head Q [S, A])."""
  observations = jnp.eye(maze.num_states)  # one-hot cell encoding
  data = Dataset(*map(jnp.asarray, dataset))
  value_net, q_net = MLP(HIDDEN_DIMS, 1), TwinQ(maze.num_actions)
  value_fn = lambda params, s: value_net.apply(params, observations[s])[..., 0]
  q_fn = lambda params, s: q_net.apply(params, observations[s])
  optimiser = optax.adam(LEARNING_RATE)
  v_key, q_key, sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  v_params = value_net.init(v_key, observations[:1])
  q_params = q_net.init(q_key, observations[:1])
  state = TrainState(v_params, q_params, q_params, optimiser.init(v_params),
                     optimiser.init(q_params))

  def update(state, key):
    batch = jax.tree_util.tree_map(
        lambda x: x[jax.random.randint(key, (BATCH_SIZE,), 0, len(x))], data)
    take = lambda q: jnp.take_along_axis(  # [2, B, A] -> [2, B] at a_i
        q, batch.actions[None, :, None], axis=-1)[..., 0]
    # Eq. (5): V towards the tau-expectile of the target Q's min head.
    target_q = take(q_fn(state.target_q, batch.states)).min(axis=0)
    v_loss, v_grads = jax.value_and_grad(
        lambda p: losses.value_loss(value_fn(p, batch.states), target_q,
                                    expectile))(state.v)
    v_updates, v_opt = optimiser.update(v_grads, state.v_opt)
    v_params = optax.apply_updates(state.v, v_updates)
    # Eq. (6): both Q heads towards r + gamma * mask * V(s'), with the new V.
    target = losses.td_target(batch.rewards, DISCOUNT, batch.masks,
                              value_fn(v_params, batch.next_states))
    q_loss, q_grads = jax.value_and_grad(
        lambda p: losses.critic_loss(*take(q_fn(p, batch.states)), target))(
            state.q)
    q_updates, q_opt = optimiser.update(q_grads, state.q_opt)
    q_params = optax.apply_updates(state.q, q_updates)
    target_q = optax.incremental_update(q_params, state.target_q,
                                        TARGET_UPDATE_RATE)
    return (TrainState(v_params, q_params, target_q, v_opt, q_opt),
            (v_loss, q_loss))

  @jax.jit
  def run_chunk(state, key):
    return jax.lax.scan(update, state, jax.random.split(key, steps_per_call))

  start_time = time.time()
  for chunk in range(num_steps // steps_per_call):
    state, (v_loss, q_loss) = run_chunk(state,
                                        jax.random.fold_in(sample_key, chunk))
    done = (chunk + 1) * steps_per_call
    rate = done / (time.time() - start_time)
    if done % max(num_steps // 10, steps_per_call) == 0 or done == num_steps:
      print(f'[{name}] step {done}/{num_steps}  {rate:.0f} steps/s  '
            f'ETA {(num_steps - done) / rate:.0f}s  '
            f'v_loss {float(v_loss.mean()):.4f}  '
            f'q_loss {float(q_loss.mean()):.4f}', flush=True)
  all_states = jnp.arange(maze.num_states)
  return (np.asarray(value_fn(state.v, all_states), np.float64),
          np.asarray(q_fn(state.q, all_states).min(axis=0), np.float64))


def evaluate(maze: UMaze, rng, v, policy_actions, optimal_v, num_rollouts):
  """v_corr, v_mae against the optimal V (non-goal cells) and success."""
  cells = np.arange(maze.num_states) != maze.goal
  return dict(
      v_corr=float(np.corrcoef(v[cells], optimal_v[cells])[0, 1]),
      v_mae=float(np.mean(np.abs(v[cells] - optimal_v[cells]))),
      success=success_rate(maze, rng, policy_actions, num_rollouts))


def plot(maze: UMaze, panels, path: str):
  """Figure 2: (a) the maze, then per method its V map and greedy arrows."""
  num_axes = 1 + len(panels)
  fig, axes = plt.subplots(1, num_axes, figsize=(4 * num_axes, 4))
  axes[0].imshow(maze.grid != WALL, cmap='gray', vmin=-0.3, vmax=1.)
  axes[0].set_title('(a) U-maze')
  for label, cell in ((START, maze.start), (GOAL, maze.goal)):
    row, col = maze.cells[cell]
    axes[0].text(col, row, label, ha='center', va='center', color='red',
                 fontsize=14, fontweight='bold')
  cmap = plt.get_cmap('viridis').with_extremes(bad='lightgray')
  vmax = max(np.max(v) for _, v, _ in panels)
  acting = np.arange(maze.num_states) != maze.goal  # G is terminal
  rows, cols = maze.cells[acting].T
  for ax, (title, v, actions) in zip(axes[1:], panels):
    image = ax.imshow(maze.to_grid(np.where(acting, v, np.nan)), cmap=cmap,
                      vmin=0., vmax=vmax)
    moves = MOVES[actions[acting]]
    ax.quiver(cols, rows, moves[:, 1], -moves[:, 0], color='white',
              pivot='middle', scale=16, width=0.01)
    for label, cell in ((START, maze.start), (GOAL, maze.goal)):
      row, col = maze.cells[cell]
      ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False,
                                 edgecolor='red', linewidth=2))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def to_json_grid(maze: UMaze, values):
  """Per-cell values as rows of the layout, None on walls (strict JSON)."""
  return [[None if np.isnan(x) else float(x) for x in row]
          for row in maze.to_grid(values)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true',
                      help='a tiny run (seconds), for tests')
  args = parser.parse_args(argv)
  settings = dict(train_steps=TRAIN_STEPS, steps_per_call=STEPS_PER_CALL,
                  num_rollouts=NUM_ROLLOUTS)
  if args.quick:
    settings.update(QUICK)
  start_time = time.time()
  rng = np.random.default_rng(args.seed)
  maze = UMaze()

  optimal_v, optimal_q = tabular.value_iteration(*maze.mdp(), DISCOUNT)
  optimal_actions = optimal_q.argmax(axis=1)
  dataset = collect_dataset(maze, rng, optimal_actions)
  print(f'dataset: {len(dataset.states)} transitions, '
        f'{int((1 - dataset.masks).sum())} enter the goal', flush=True)

  results = {'optimal': evaluate(maze, rng, optimal_v, optimal_actions,
                                 optimal_v, settings['num_rollouts'])}
  panels = [('(b) optimal V', optimal_v, optimal_actions)]
  for name, title, expectile in (
      ('onestep', '(c) one-step (tau=0.5)', ONESTEP_EXPECTILE),
      ('iql', f'(d) IQL (tau={IQL_EXPECTILE})', IQL_EXPECTILE)):
    v, q = train(maze, dataset, expectile, args.seed, settings['train_steps'],
                 settings['steps_per_call'], name)
    actions = q.argmax(axis=1)
    results[name] = dict(expectile=expectile, **evaluate(
        maze, rng, v, actions, optimal_v, settings['num_rollouts']))
    results[name]['v'] = to_json_grid(maze, v)
    panels.append((f'{title}\nsuccess {results[name]["success"]:.3f}',
                   v, actions))
    print(f'[{name}] ' + '  '.join(f'{k} {results[name][k]:.3f}' for k in
                                   ('v_corr', 'v_mae', 'success')), flush=True)

  results['optimal']['v'] = to_json_grid(maze, optimal_v)
  results['config'] = dict(
      seed=args.seed, quick=args.quick, layout=LAYOUT.strip().splitlines(),
      slip_prob=SLIP_PROB, slip='uniformly random action (neighbour or stay)',
      goal_reward=GOAL_REWARD, goal_terminal=True, discount=DISCOUNT,
      horizon=HORIZON, num_optimal_trajectories=NUM_OPTIMAL_TRAJECTORIES,
      num_random_trajectories=NUM_RANDOM_TRAJECTORIES,
      num_transitions=len(dataset.states), hidden_dims=list(HIDDEN_DIMS),
      encoding='one-hot cell', learning_rate=LEARNING_RATE,
      batch_size=BATCH_SIZE, target_update_rate=TARGET_UPDATE_RATE,
      policy='greedy argmax_a min_i Q_i(s, a)',
      metrics_cells='free cells except the terminal goal',
      **settings)
  os.makedirs(args.out, exist_ok=True)
  plot(maze, panels, os.path.join(args.out, 'toy_umaze.png'))
  results['config']['wall_time_s'] = round(time.time() - start_time, 1)
  with open(os.path.join(args.out, 'toy_umaze.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(json.dumps({k: {m: v for m, v in r.items() if m != 'v'}
                    for k, r in results.items() if k != 'config'}))
  print(f'wall time {results["config"]["wall_time_s"]}s; wrote {args.out}')
  return results


if __name__ == '__main__':
  main()
