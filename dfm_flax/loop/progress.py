"""Progress of the train loop: a tqdm bar on a terminal, whole lines in a log file.

tqdm in a file writes carriage-return updates that a log viewer shows as one ever-longer
line; in a file (stderr not a terminal) `LineProgress` instead prints one plain line every
`every_s` seconds: step, percent, rate, ETA and the last logged scalars.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class LineProgress:
  """The part of tqdm's interface the loop uses, as periodic lines on stderr."""

  def __init__(self, total: int, initial: int, desc: str, every_s: float = 30.0,
               disable: bool = False, unit: str = "step"):
    self.total, self.n, self.desc, self.unit = total, initial, desc, unit
    self.every_s, self.disable = every_s, disable
    self._start_n, self._tic = initial, time.perf_counter()
    self._last = self._tic
    self._postfix = ""

  def set_postfix(self, values: dict, refresh: bool = True) -> None:
    del refresh
    self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def update(self, k: int = 1) -> None:
    self.n += k
    now = time.perf_counter()
    if now - self._last >= self.every_s:
      self._last = now
      self._print(now)

  def _print(self, now: float) -> None:
    if self.disable:
      return
    rate = (self.n - self._start_n) / max(now - self._tic, 1e-9)
    eta = (self.total - self.n) / rate if rate > 0 else float("inf")
    postfix = f", {self._postfix}" if self._postfix else ""
    print(f"{self.desc}: {self.unit} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), "
          f"{rate:.1f} {self.unit}/s, ETA {_clock(eta)}{postfix}", file=sys.stderr, flush=True)

  def write(self, line: str, file=None) -> None:
    """A message on its own line, even when the progress is disabled (as tqdm.write)."""
    print(line, file=file or sys.stderr, flush=True)

  def close(self) -> None:
    if self.n != self._start_n:
      self._print(time.perf_counter())
    self._start_n = self.n  # Closing twice prints once.


def _clock(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bar(total: int, initial: int, desc: str, disable: bool, unit: str = "step"):
  """tqdm on a terminal, LineProgress otherwise."""
  if sys.stderr.isatty():
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                disable=disable, mininterval=0.1)
  return LineProgress(total, initial, desc, disable=disable, unit=unit)
