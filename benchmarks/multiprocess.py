"""The cost of spreading one run over processes: steps/s on 1x4, 2x2 and 4x1
(processes x devices per process) CPU devices, the same 4 devices in total.

  python -m benchmarks.multiprocess [--config experiments/compress.py:best] [--steps 30] [--repeats 5]

Each layout is started afresh (dfm_flax/parallel/processes.py's environment, gloo collectives
between processes); process 0 prints the median steps/s of `repeats` timings of
`steps` train steps (compile excluded). On one machine the processes share its cores,
so this measures the overhead of the multi-process step (collectives through gloo and
the coordination service instead of in-process), not a speed-up.
"""
import argparse
import json
import subprocess
import sys

from benchmarks.scaling import load_config, measure
from dfm_flax.parallel import distributed
from dfm_flax.parallel import processes as launcher

LAYOUTS = ((1, 4), (2, 2), (4, 1))


def worker(args) -> None:
  config = load_config(args.config)
  if args.processes > 1:
    config.dist.coordinator = f"127.0.0.1:{args.port}"
    config.dist.num_processes, config.dist.process_id = args.processes, args.process_id
    distributed.initialize(config)
  rate = measure(config, -1, args.steps, args.repeats)
  if distributed.is_main():
    print(json.dumps({"steps_per_s": rate}), flush=True)
  distributed.finish()


def run_layout(args, processes: int, devices: int) -> float:
  port = launcher.free_port()
  env = launcher.environment(devices, cpu=True)
  cmds = [[sys.executable, "-m", "benchmarks.multiprocess", "--worker", "--config", args.config,
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--port", str(port),
           "--processes", str(processes), "--process_id", str(i)] for i in range(processes)]
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True) for c in cmds]
  outs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    sys.exit(f"error: layout {processes}x{devices} failed: {[p.returncode for p in procs]}")
  return json.loads(outs[0].strip().splitlines()[-1])["steps_per_s"]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/compress.py:best")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker(args)
  print(f"{args.config}: {args.steps} steps x {args.repeats} repeats, median; 4 CPU devices in all")
  print(f"{'layout':>7} {'steps/s':>9} {'vs 1x4':>7}")
  base = None
  for processes, devices in LAYOUTS:
    rate = run_layout(args, processes, devices)
    base = base or rate
    print(f"{processes}x{devices:<5} {rate:>9.2f} {rate / base:>6.2f}x", flush=True)


if __name__ == "__main__":
  main()
