"""The one error type every loader raises for bad or missing data."""


class DatasetError(ValueError):
  """A dataset cannot be used as it is.

  The message is always one line: the file (or dataset name), the problem and
  what to do about it, so it reads well at the end of a long log.
  """

  def __init__(self, message: str):
    # Collapse newlines from wrapped library errors (h5py, numpy) to one line.
    super().__init__(' '.join(str(message).split()))


def dataset_error(source, problem: str, fix: str) -> DatasetError:
  """Builds the standard '<source>: <problem>; <fix>' error."""
  return DatasetError(f'{source}: {problem}; {fix}')
