"""Start N processes of one run on this machine: a local stand-in for `srun`, for tests.

  python -m experiments.launch --processes 2 [--devices 2] [--port 0] [--cpu] -- \\
      --config experiments/compress.py:smoke --workdir runs/two

Each process runs `python -m experiments.run ARGS --config.dist.coordinator=127.0.0.1:PORT
--config.dist.num_processes=N --config.dist.process_id=I` (port 0: a free one), with
--devices CPU devices each when --cpu (XLA's host-platform device count). Output
lines are prefixed [p0], [p1], ... If one process fails, the others get
--grace seconds to exit on their own (they detect it: dfm_flax/distributed.py), then
are killed; the exit code is the first failure's.
"""
import argparse
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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices", type=int, default=1, help="CPU devices per process (with --cpu)")
  p.add_argument("--cpu", action="store_true", help="run on CPU devices (tests, laptops)")
  p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  p.add_argument("--grace", type=float, default=60.0,
                 help="seconds the others get to exit after one fails")
  p.add_argument("args", nargs=argparse.REMAINDER, help="-- then the experiments.run flags")
  a = p.parse_args()
  args = a.args[1:] if a.args[:1] == ["--"] else a.args
  if a.processes < 1 or a.devices < 1:
    print("error: --processes and --devices must be at least 1", file=sys.stderr)
    sys.exit(2)
  sys.exit(launch(args, a.processes, a.devices, a.cpu, a.port, a.grace))


if __name__ == "__main__":
  main()
