"""N processes of one run on this machine: a local stand-in for `srun`.

`launch` starts `python -m experiments.run ARGS` N times with the coordinator, process
count and process id of each (dfm_flax/parallel/distributed.py joins them), relays their output
prefixed [p0], [p1], ..., and, if one fails, gives the others `grace` seconds to exit on
their own before killing them. experiments.launch is its command line; the tests and
benchmarks.multiprocess use `free_port`, `environment` and `commands` directly.
"""
import os
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def commands(args: list[str], processes: int, port: int) -> list[list[str]]:
  dist = [f"--config.dist.coordinator=127.0.0.1:{port}", f"--config.dist.num_processes={processes}"]
  return [[sys.executable, "-m", "experiments.run", *args, *dist, f"--config.dist.process_id={i}"]
          for i in range(processes)]


def environment(devices: int, cpu: bool) -> dict:
  env = dict(os.environ)
  if cpu:
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _relay(proc, prefix: str) -> None:
  for line in proc.stdout:
    sys.stdout.write(f"{prefix} {line}")
    sys.stdout.flush()


def launch(args: list[str], processes: int, devices: int, cpu: bool, port: int = 0,
           grace: float = 60.0) -> int:
  port = port or free_port()
  env = environment(devices, cpu)
  procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for cmd in commands(args, processes, port)]
  relays = [threading.Thread(target=_relay, args=(p, f"[p{i}]"), daemon=True)
            for i, p in enumerate(procs)]
  for t in relays:
    t.start()
  first_failure, deadline = 0, None
  try:
    while any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        if p.poll() not in (None, 0) and not first_failure:
          first_failure, deadline = p.returncode, time.monotonic() + grace
          print(f"[launch] process {i} exited with code {p.returncode}", flush=True)
      if deadline and time.monotonic() > deadline:
        for i, p in enumerate(procs):
          if p.poll() is None:
            print(f"[launch] killing process {i}: still running {grace:.0f} s after a failure",
                  flush=True)
            p.kill()
      time.sleep(0.1)
  except KeyboardInterrupt:  # Pass Ctrl-C on: every process saves a checkpoint and stops.
    for p in procs:
      p.send_signal(2)
    for p in procs:
      p.wait()
  for t in relays:
    t.join(timeout=5)
  codes = [p.returncode for p in procs]
  return first_failure or next((c for c in codes if c), 0)
