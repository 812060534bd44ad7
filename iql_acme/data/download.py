"""D4RL dataset files: where they are cached and how they are fetched.

Names and URLs come from `d4rl.infos.DATASET_URLS` and the file name from the
URL, as `d4rl.offline_env.download_dataset_from_url` does, so files already
cached by D4RL are found. The download streams into a temporary file next to
the destination and is renamed only once its size matches Content-Length and
it opens as a D4RL HDF5 file: a failed or cut-off download never leaves a
file under the final name. D4RL publishes no checksums; the SHA-256 of each
download is logged so it can be recorded.
"""

import difflib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from typing import Dict, Optional, Sequence

from absl import logging
import h5py
import tqdm

from iql_acme.data.d4rl_hdf5 import REQUIRED_KEYS
from iql_acme.data.errors import DatasetError, dataset_error

DEFAULT_DATASET_DIR = os.path.join('~', '.d4rl', 'datasets')
DOWNLOAD_TIMEOUT_S = 60.0  # Per blocking socket operation, not the whole file.
CHUNK_BYTES = 1 << 20
MAX_SUGGESTIONS = 5
FILE_MODE = 0o644
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


def d4rl_urls() -> Dict[str, str]:
  """D4RL's name -> URL table (looked up on each call, so it can be patched)."""
  os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
  import d4rl.infos  # pylint: disable=g-import-not-at-top
  return d4rl.infos.DATASET_URLS


def d4rl_dataset_dir(dataset_dir: Optional[str] = None) -> str:
  """`dataset_dir`, else $D4RL_DATASET_DIR, else ~/.d4rl/datasets."""
  return os.path.expanduser(dataset_dir or os.environ.get('D4RL_DATASET_DIR')
                            or DEFAULT_DATASET_DIR)


def d4rl_url(name: str) -> str:
  urls = d4rl_urls()
  if name not in urls:
    raise unknown_name_error(name)
  return urls[name]


def unknown_name_error(name: str, other_names: Sequence[str] = ()
                       ) -> DatasetError:
  """Says `name` is unknown, lists close D4RL (and other) names."""
  close = difflib.get_close_matches(
      name, list(d4rl_urls()) + list(other_names), n=MAX_SUGGESTIONS)
  hint = f'close matches: {close}' if close else 'no close matches'
  return dataset_error(name, f'unknown dataset name ({hint})', 'pass a D4RL '
                       'name (d4rl.infos.DATASET_URLS), a local Minari id, or '
                       'the path of a .hdf5/.h5, .npz or .npy file or of a '
                       'dataset directory')


def d4rl_dataset_path(name: str, dataset_dir: Optional[str] = None) -> str:
  """Where the file of D4RL dataset `name` is (or would be) cached."""
  return os.path.join(d4rl_dataset_dir(dataset_dir),
                      os.path.split(d4rl_url(name))[1])


def download_d4rl(name: str, dataset_dir: Optional[str] = None) -> str:
  """Downloads D4RL dataset `name` unless cached; returns the local path."""
  url = d4rl_url(name)
  path = d4rl_dataset_path(name, dataset_dir)
  if os.path.isfile(path):
    return path

  def failure(reason: str) -> DatasetError:
    return DatasetError(f'could not download {name} from {url}: {reason}; '
                        f'place the file at {path} or set D4RL_DATASET_DIR')

  directory = os.path.dirname(path)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise failure(f'cannot create {directory} ({e})')
  logging.info('Downloading %s from %s to %s', name, url, path)
  handle, temp_path = tempfile.mkstemp(
      dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.part')
  try:
    with os.fdopen(handle, 'wb') as out:
      received, expected, sha256 = _stream(url, out, name, failure)
    if expected is not None and received != expected:
      raise failure(f'received {received} of {expected} bytes '
                    '(Content-Length); the transfer was cut off')
    problem = _hdf5_problem(temp_path)
    if problem:
      raise failure(f'the downloaded file is not a usable D4RL HDF5 file '
                    f'({problem})')
    os.chmod(temp_path, FILE_MODE)  # mkstemp makes it private (0600).
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.unlink(temp_path)
    raise
  logging.info('Downloaded %s: %d bytes, sha256 %s', path, received, sha256)
  return path


def _stream(url: str, out, name: str, failure):
  """Copies the body of `url` to `out`; returns (bytes, length, sha256)."""
  try:
    response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
  except _NETWORK_ERRORS as e:
    raise failure(_reason(e))
  digest, received = hashlib.sha256(), 0
  with response:
    length = response.headers.get('Content-Length')
    expected = int(length) if length and length.isdigit() else None
    with tqdm.tqdm(total=expected, unit='B', unit_scale=True,
                   unit_divisor=1024, desc=f'download {name}') as bar:
      while True:
        try:
          chunk = response.read(CHUNK_BYTES)
        except _NETWORK_ERRORS as e:
          raise failure(f'connection lost after {received} bytes '
                        f'({_reason(e)})')
        if not chunk:
          break
        try:
          out.write(chunk)
        except OSError as e:  # E.g. disk full.
          raise failure(f'cannot write the file ({e})')
        digest.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))
  return received, expected, digest.hexdigest()


def _hdf5_problem(path: str) -> Optional[str]:
  """Why `path` is not a readable D4RL HDF5 file, or None when it is."""
  if not h5py.is_hdf5(path):
    return 'no HDF5 signature'
  try:
    with h5py.File(path, 'r') as h5file:
      missing = [k for k in REQUIRED_KEYS if k not in h5file]
      if missing:
        return f'missing keys {missing}'
      for key in REQUIRED_KEYS:  # Reading the last row finds a cut-off file.
        if isinstance(h5file[key], h5py.Dataset) and len(h5file[key]):
          _ = h5file[key][-1]
  except (OSError, RuntimeError, TypeError) as e:
    return f'cannot read it: {e}'
  return None


def _reason(error: BaseException) -> str:
  if isinstance(error, urllib.error.URLError) and not isinstance(
      error, urllib.error.HTTPError):
    return str(error.reason)
  return str(error) or type(error).__name__
