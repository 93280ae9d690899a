"""Start N processes of one run on this machine: a local stand-in for `srun`, for tests.

  python -m experiments.launch --processes 2 [--devices 2] [--port 0] [--cpu] -- \\
      --config experiments/compress.py:smoke --workdir runs/two

Each process runs `python -m experiments.run ARGS --config.dist.coordinator=127.0.0.1:PORT
--config.dist.num_processes=N --config.dist.process_id=I` (port 0: a free one), with
--devices CPU devices each when --cpu (XLA's host-platform device count). Output
lines are prefixed [p0], [p1], ... If one process fails, the others get
--grace seconds to exit on their own (they detect it: dfm_flax/parallel/distributed.py), then
are killed; the exit code is the first failure's.
"""
import argparse
import sys

from dfm_flax.parallel.processes import launch


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
