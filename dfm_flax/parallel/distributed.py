"""Many processes, one run: JAX's multi-controller runtime (`jax.distributed`).

A run is one process of many when SLURM says so (SLURM_NTASKS > 1, e.g. under
`srun`) or when config.dist.num_processes > 1 (a hand launch, or
`python -m experiments.launch`). Then, before jax touches a device, `initialize`:
  * checks the settings (process id in range, coordinator host:port, and on
    process 0 that the port is free) and joins the run within dist.timeout_s;
  * checks that every process has the same config (a hash of everything but
    dist.process_id) and the same num_processes, and refuses otherwise, on every
    process;
  * starts a watchdog thread: each process publishes a heartbeat in the
    coordination service's key-value store, and a process whose peer has been
    silent for dist.heartbeat_s prints one line naming it and exits, instead of
    hanging in a collective that will never complete.
The mesh then spans all processes' devices (dfm_flax/parallel/sharding.py); process 0
alone writes logs, figures and metrics (`is_main`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass

import jax

from dfm_flax import files
from dfm_flax.errors import UserError

_KEY = "dfm"
_watchdog: "_Watchdog | None" = None


@dataclass
class Settings:
  num_processes: int
  process_id: int
  coordinator: str | None  # None: JAX finds it from the SLURM environment.
  source: str  # "config" or "SLURM"


def settings(config) -> Settings | None:
  """This process's place in a multi-process run, or None for a single-process run."""
  dist = config.get("dist") or {}
  if dist.get("num_processes", 1) > 1 or dist.get("coordinator"):
    if dist.get("num_processes", 1) < 2 or dist.get("process_id", -1) < 0 or not dist.get("coordinator"):
      raise UserError("a hand launch needs all of --config.dist.coordinator=HOST:PORT, "
                      "--config.dist.num_processes=N (N >= 2) and --config.dist.process_id=I")
    return Settings(dist.num_processes, dist.process_id, dist.coordinator, "config")
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
    return Settings(int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_PROCID"]),
                    dist.get("coordinator") or None, "SLURM")
  return None


def _flat_config(config) -> dict:
  """The config as {dotted key: value}, without the per-process dist.process_id."""
  d = files.flatten(json.loads(config.to_json_best_effort()))
  d.pop("dist.process_id", None)
  return d


def config_hash(config) -> str:
  """A hash of the whole config except the per-process dist.process_id."""
  return hashlib.sha256(json.dumps(_flat_config(config), sort_keys=True).encode()).hexdigest()[:16]


def _check(s: Settings) -> tuple[str, int] | None:
  if not 0 <= s.process_id < s.num_processes:
    raise UserError(f"process id {s.process_id} is out of range for {s.num_processes} "
                    f"processes (0..{s.num_processes - 1})")
  if s.coordinator is None:
    return None
  m = re.fullmatch(r"\[?([\w.:-]+?)\]?:(\d+)", s.coordinator)
  if not m or not 0 < int(m.group(2)) < 65536:
    raise UserError(f"dist.coordinator must be HOST:PORT with a port in 1..65535, "
                    f"got {s.coordinator!r}")
  return m.group(1), int(m.group(2))


def _port_free(port: int) -> bool:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      sock.bind(("", port))
    except OSError:
      return False
  return True


def _wait_for_coordinator(host: str, port: int, timeout: int, who: str) -> None:
  """Wait until process 0's service accepts connections: JAX aborts the process (no
  exception) when it cannot register with a coordinator, so find out first."""
  deadline, reason = time.monotonic() + timeout, "no answer"
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
      time.sleep(0.2)
  raise UserError(f"{who}: no coordinator answers at {host}:{port} after {timeout} s "
                  f"({reason}); check dist.coordinator and that process 0 is running")


def initialize(config) -> Settings | None:
  """Join the multi-process run the config or SLURM describes (no-op for one process)."""
  s = settings(config)
  if s is None:
    return None
  dist = config.get("dist") or {}
  timeout, heartbeat = int(dist.get("timeout_s", 120)), int(dist.get("heartbeat_s", 30))
  who = f"process {s.process_id} of {s.num_processes}"
  _preflight(s, timeout, who)
  _join(s, timeout, heartbeat, who)
  _agree(config, s, timeout)
  global _watchdog
  _watchdog = _Watchdog(s.process_id, s.num_processes, heartbeat)
  _watchdog.start()
  return s


def _preflight(s: Settings, timeout: int, who: str) -> None:
  """What can be checked before JAX's runtime starts (it aborts rather than raise)."""
  host_port = _check(s)
  if host_port and s.process_id == 0 and not _port_free(host_port[1]):
    raise UserError(f"{who}: the coordinator port {host_port[1]} is in use on this machine; "
                    f"pick another port in dist.coordinator")
  if host_port and s.process_id > 0:
    _wait_for_coordinator(*host_port, timeout, who)


def _join(s: Settings, timeout: int, heartbeat: int, who: str) -> None:
  # CPU collectives across processes go over gloo (GPUs use NCCL whatever this says).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=timeout + 30,
                # JAX's own detector is the backstop; ours (heartbeat) speaks first.
                heartbeat_timeout_seconds=3 * heartbeat, shutdown_timeout_seconds=3600)
  if s.source == "config":
    kwargs.update(coordinator_address=s.coordinator, num_processes=s.num_processes,
                  process_id=s.process_id)
  elif s.coordinator:
    kwargs.update(coordinator_address=s.coordinator)
  where = s.coordinator or "the SLURM coordinator"
  # JAX aborts the process (no exception) when the run does not assemble within its
  # own timeout, so a timer of ours, shorter, says what went wrong first.
  guard = threading.Timer(timeout, _die, [
      f"{who}: the {s.num_processes} processes did not all join the run at {where} within "
      f"{timeout} s; check that every process was started, with the same dist.coordinator "
      f"and num_processes"])
  guard.daemon = True
  guard.start()
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 (jaxlib raises its own XlaRuntimeError types)
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f"{who}: could not join the run at {where} ({reason}); check the address, "
                    f"that process 0 is running, and that every process has the same "
                    f"num_processes") from None
  finally:
    guard.cancel()


def _client():
  # The runtime's key-value store; JAX has no public handle to it yet.
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


def _agree(config, s: Settings, timeout: int) -> None:
  """Refuse, on every process, a run whose processes differ in config or size."""
  client = _client()
  mine = {"hash": config_hash(config), "num_processes": s.num_processes,
          "config": _flat_config(config)}
  client.key_value_set(f"{_KEY}/start/{s.process_id}", json.dumps(mine))
  for other in range(s.num_processes):
    if other == s.process_id:
      continue
    try:
      theirs = json.loads(client.blocking_key_value_get(f"{_KEY}/start/{other}", timeout * 1000))
    except Exception:  # noqa: BLE001
      raise UserError(f"process {s.process_id}: process {other} did not start within "
                      f"{timeout} s; are all {s.num_processes} processes launched?") from None
    if theirs["num_processes"] != s.num_processes:
      raise UserError(f"process {s.process_id} was started with num_processes="
                      f"{s.num_processes} but process {other} with {theirs['num_processes']}; "
                      f"start every process with the same value")
    if theirs["hash"] != mine["hash"]:
      a, b = mine["config"], theirs["config"]
      diff = [f"{k}: {a.get(k)!r} here, {b.get(k)!r} there" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k)]
      raise UserError(f"process {s.process_id} and process {other} were started with different "
                      f"configs ({'; '.join(diff[:3]) or 'hash ' + mine['hash']}); start every "
                      f"process with the same command line")


class _Watchdog(threading.Thread):
  """Heartbeats through the coordination service; exits when a peer falls silent."""

  def __init__(self, process_id: int, num_processes: int, timeout_s: int):
    super().__init__(daemon=True, name="dfm-watchdog")
    self.process_id, self.num_processes, self.timeout_s = process_id, num_processes, timeout_s
    self.stopped = threading.Event()

  def run(self):
    client, beat, last = _client(), 0, {}
    period = max(0.2, min(2.0, self.timeout_s / 5))
    while not self.stopped.wait(period):
      beat += 1
      try:
        client.key_value_set(f"{_KEY}/alive/{self.process_id}", str(beat), allow_overwrite=True)
        now = time.monotonic()
        for other in range(self.num_processes):
          if other == self.process_id or _done(client, other):
            continue
          value = _try_get(client, f"{_KEY}/alive/{other}")
          if other not in last or last[other][0] != value:
            last[other] = (value, now)
          elif now - last[other][1] > self.timeout_s:
            _die(f"process {self.process_id}: process {other} of {self.num_processes} stopped "
                 f"(no heartbeat for {self.timeout_s} s); exiting. Relaunch the same command to "
                 f"resume from the last checkpoint")
      except Exception as e:  # noqa: BLE001 (the coordinator is gone)
        if self.stopped.is_set():
          return
        _die(f"process {self.process_id}: lost the coordinator (process 0) "
             f"({type(e).__name__}); exiting. Relaunch the same command to resume from the "
             f"last checkpoint")


def _try_get(client, key: str):
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # noqa: BLE001 (jaxlib: NOT_FOUND when the key was never set)
    if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
      return None
    raise


def _done(client, other: int) -> bool:
  return _try_get(client, f"{_KEY}/done/{other}") is not None


def _die(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(1)


def is_main() -> bool:
  """True on the process that writes logs, figures and metrics (process 0)."""
  return jax.process_index() == 0


def finish() -> None:
  """Tell the peers this process is done (not dead), then leave the run together."""
  if _watchdog is None:
    return
  _client().key_value_set(f"{_KEY}/done/{_watchdog.process_id}", "1")
  _watchdog.stopped.set()
  jax.distributed.shutdown()
