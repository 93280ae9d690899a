"""A run's directory: made or refused in one line up front, and held by one run at a time.

`hold(directory)` takes DIR/.lock, a file holding the owner's process id, host and start
time, created atomically (O_EXCL), so of two runs started on one directory exactly one gets
it. The other is refused in one line naming the holder. A lock left by a process that is
gone (on this host) is taken over with one line; a lock held on another host cannot be
checked from here, so the message says how to clear it by hand.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from dfm_flax.errors import UserError

LOCK = ".lock"
# A lock file still empty after this long was left by a process killed while writing it.
EMPTY_LOCK_GRACE_S = 10.0


def prepare(directory: str, what: str = "workdir") -> str:
  """Make `directory` (and its parents), or refuse in one line: a file in the way, no
  permission, a read-only or full filesystem."""
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise UserError(f"{what} {directory} is a file, not a directory; give another path")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {what} {directory}: {e.strerror}") from None
  if not os.access(directory, os.W_OK | os.X_OK):
    raise UserError(f"{what} {directory} is not writable; give another path")
  return directory


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: alive
    return True
  return True


def _read(path: str) -> dict | None:
  """The holder recorded in a lock file; {} for one not yet (or never fully) written,
  None when it is gone."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    return json.loads(text)
  except ValueError:
    return {}


def _stale(holder: dict, path: str) -> bool:
  """True for a lock whose holder is certainly gone."""
  if not holder:  # empty: stale once its writer has had time to finish
    try:
      return time.time() - os.path.getmtime(path) > EMPTY_LOCK_GRACE_S
    except FileNotFoundError:
      return False
  return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))


def _describe(holder: dict) -> str:
  if not holder:
    return "a run that is still starting"
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"process {holder.get('pid')} on {holder.get('host')} (since {started})"


class Lock:
  """DIR/.lock held by this process; release() removes it if it is still ours."""

  def __init__(self, directory: str):
    self.path = os.path.join(directory, LOCK)
    self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    self.held = False

  def acquire(self) -> Lock:
    for _ in range(5):  # a taken-over stale lock may be raced for once more
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if holder is None:
          continue  # released in between
        if not _stale(holder, self.path):
          directory = os.path.dirname(self.path)
          raise UserError(f"{directory} is in use by {_describe(holder)}; wait for it to end, "
                          f"stop it, or use another directory" + (
                              f" (if that host is gone, delete {self.path})"
                              if holder.get("host") not in (None, socket.gethostname()) else ""))
        self._set_aside(holder)
        continue
      except OSError as e:
        raise UserError(f"cannot write in {os.path.dirname(self.path)}: {e.strerror}") from None
      with os.fdopen(fd, "w") as f:
        json.dump(self.me, f)
      self.held = True
      return self
    raise UserError(f"could not take {self.path}: other runs keep taking it")

  def _set_aside(self, holder: dict) -> None:
    """Rename a stale lock away (atomic: of two runs taking it over, one renames it)."""
    aside = f"{self.path}.stale-{os.getpid()}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # the other run took it over first
    os.remove(aside)
    print(f"note: {os.path.dirname(self.path)} was locked by {_describe(holder)}, which is "
          f"gone; taking it over", file=sys.stderr)

  def release(self) -> None:
    if self.held and _read(self.path) == self.me:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    self.held = False


@contextlib.contextmanager
def hold(directory: str, enabled: bool = True):
  """Hold DIR/.lock for the block (enabled=False: another process of the job holds it)."""
  lock = Lock(directory)
  if enabled:
    lock.acquire()
  try:
    yield lock
  finally:
    lock.release()
