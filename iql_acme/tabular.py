"""Exact dynamic programming on small finite MDPs: the references IQL is held to.

An MDP here is a pair of arrays: `transitions[s, a, s']`, the probability of
moving to s' and *continuing* (rows may sum to less than 1: the missing mass is
the probability that the episode terminates, after which the value is 0), and
`rewards[s, a]`, the expected immediate reward. Terminal states are states
whose rows are all zero. This one convention covers the true maze (entering
the goal ends the episode) and the empirical MDP of a dataset (mask = 0).
"""

from typing import NamedTuple, Optional

import numpy as np

_TOLERANCE = 1e-10
_MAX_ITERATIONS = 100_000


def q_backup(transitions, rewards, discount, v):
  """Q(s, a) = r(s, a) + gamma * sum_s' p(s' | s, a) V(s')."""
  return rewards + discount * transitions @ v


def value_iteration(transitions, rewards, discount: float,
                    allowed: Optional[np.ndarray] = None):
  """Optimal (V, Q), the max taken only over `allowed[s, a]` when given.

  With `allowed` = actions present in a dataset this is the in-support optimum
  of the paper's Theorem 3. A state with no allowed action has V = 0.
  """
  num_states, num_actions = rewards.shape
  if allowed is None:
    allowed = np.ones((num_states, num_actions), bool)
  has_action = allowed.any(axis=1)
  v = np.zeros(num_states)
  for _ in range(_MAX_ITERATIONS):
    q = q_backup(transitions, rewards, discount, v)
    new_v = np.where(has_action, np.where(allowed, q, -np.inf).max(axis=1), 0.)
    if np.max(np.abs(new_v - v)) < _TOLERANCE:
      break
    v = new_v
  else:
    raise RuntimeError('value iteration did not converge')
  return new_v, q_backup(transitions, rewards, discount, new_v)


def policy_evaluation(transitions, rewards, discount: float, policy):
  """Exact (V, Q) of `policy[s, a]` by solving (I - gamma P_pi) V = r_pi."""
  p_pi = np.einsum('sa,sat->st', policy, transitions)
  r_pi = np.einsum('sa,sa->s', policy, rewards)
  v = np.linalg.solve(np.eye(len(r_pi)) - discount * p_pi, r_pi)
  return v, q_backup(transitions, rewards, discount, v)


def greedy_policy(q, allowed: Optional[np.ndarray] = None):
  """One-hot policy[s, a] of argmax_a Q(s, a) (over `allowed` when given)."""
  if allowed is not None:
    q = np.where(allowed, q, -np.inf)
  return np.eye(q.shape[1])[np.argmax(q, axis=1)]


class EmpiricalMDP(NamedTuple):
  """The maximum-likelihood MDP and behaviour policy of a dataset."""
  transitions: np.ndarray  # [S, A, S] count(s, a, s', mask=1) / count(s, a)
  rewards: np.ndarray      # [S, A] mean reward of the (s, a) samples
  behaviour: np.ndarray    # [S, A] count(s, a) / count(s); 0 for unseen s
  counts: np.ndarray       # [S, A] count(s, a)


def empirical_mdp(states, actions, rewards, next_states, masks,
                  num_states: int, num_actions: int) -> EmpiricalMDP:
  """Counts a dataset of integer transitions into an EmpiricalMDP.

  A transition with mask 0 terminates: it adds to count(s, a) but to no s'.
  Unseen (s, a) pairs get zero rewards and transitions.
  """
  counts = np.zeros((num_states, num_actions))
  np.add.at(counts, (states, actions), 1.)
  reward_sums = np.zeros((num_states, num_actions))
  np.add.at(reward_sums, (states, actions), rewards)
  next_counts = np.zeros((num_states, num_actions, num_states))
  np.add.at(next_counts, (states, actions, next_states), masks)
  seen = np.maximum(counts, 1.)  # avoids 0 / 0 for unseen pairs
  state_counts = counts.sum(axis=1, keepdims=True)
  return EmpiricalMDP(
      transitions=next_counts / seen[..., None],
      rewards=reward_sums / seen,
      behaviour=counts / np.maximum(state_counts, 1.),
      counts=counts)
