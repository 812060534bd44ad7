"""Loggers: terminal lines plus a CSV per node under WORKDIR/logs (and TB)."""

import os
from typing import Optional

from acme.utils import loggers
import numpy as np
from acme.utils.loggers import tf_summary


def make_logger(workdir: Optional[str], label: str, time_delta: float = 10.0,
                csv: bool = True, tensorboard: bool = False,
                steps_key: Optional[str] = None) -> loggers.Logger:
  """Terminal every `time_delta` s; CSV (and TensorBoard) rows to workdir."""
  targets = [loggers.TerminalLogger(label=label, time_delta=time_delta,
                                    serialize_fn=serialize)]
  if workdir:
    log_dir = os.path.join(workdir, 'logs')
    os.makedirs(log_dir, exist_ok=True)
    if csv:
      csv_file = open(os.path.join(log_dir, f'{label}.csv'), 'a')  # pylint: disable=consider-using-with
      targets.append(loggers.TimeFilter(
          loggers.CSVLogger(csv_file, label=label, flush_every=1), time_delta))
    if tensorboard:
      targets.append(loggers.TimeFilter(_NumbersOnly(
          tf_summary.TFSummaryLogger(os.path.join(workdir, 'tensorboard'),
                                     label=label, steps_key=steps_key)),
                                        time_delta))
  return loggers.Dispatcher(targets, loggers.to_numpy)


TERMINAL_SIGNIFICANT_DIGITS = 4


def _format_value(value) -> str:
  value = loggers.to_numpy(value)
  if isinstance(value, (float, np.floating)):
    # Significant digits, not Acme's 3 decimals: a learning rate of 3e-4
    # would print as 0.000.
    return f'{value:.{TERMINAL_SIGNIFICANT_DIGITS}g}'
  return f'{value}'


def serialize(values) -> str:
  """Acme's terminal line ('Key = value | ...') with readable small floats."""
  return ' | '.join(f'{k.replace("_", " ").title()} = {_format_value(v)}'
                    for k, v in sorted(values.items()))


class _NumbersOnly(loggers.Logger):
  """TensorBoard takes scalars only: drops strings such as the phase name."""

  def __init__(self, to: loggers.Logger):
    self._to = to

  def write(self, values):
    self._to.write({k: v for k, v in values.items()
                    if isinstance(v, (int, float, np.number, np.ndarray))
                    and not isinstance(v, bool) and np.size(v) == 1})

  def close(self):
    self._to.close()
