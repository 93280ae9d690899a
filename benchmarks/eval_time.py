"""Time the evaluation of a finished run, cold (a fresh process, as at the end of a run),
in this tree and, with --baseline REV, in another revision of the project, alternated.

  python -m benchmarks.eval_time [--config experiments/mnist.py:smoke] [--repeats 5]
                                 [--baseline REV]

Each tree trains the config once (its own workdir, under --out), then each repeat starts a
fresh process per tree that restores the model, builds the task and times
`task.evaluate(model, workdir)` alone (imports, data loading and restoring excluded).
Prints the median and every timing per tree and, with a baseline, the speed-up; writes
OUT/eval_time.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER = """
import json, sys, time
from dfm_flax import restore, tasks
config, meta, model = restore.load_model(sys.argv[1])
task = tasks.make(config)
tic = time.perf_counter()
task.evaluate(model, sys.argv[1])
print(json.dumps({"eval_s": time.perf_counter() - tic}))
"""


def export(rev: str, directory: str) -> str:
  """The tree of git revision rev, unpacked into directory."""
  os.makedirs(directory, exist_ok=True)
  archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True)
  subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
  return directory


def run(tree: str, args: list[str], env: dict) -> str:
  proc = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"error: {' '.join(args[:3])} failed in {tree}:\n{proc.stderr[-2000:]}")
  return proc.stdout


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/mnist.py:smoke")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--baseline", default="", help="a git revision to compare with (e.g. a6a48f2)")
  p.add_argument("--out", default="", help="directory for workdirs and eval_time.json (default: a temp dir)")
  a = p.parse_args()
  out = os.path.abspath(a.out or tempfile.mkdtemp(prefix="eval_time_"))
  trees = {"this tree": ROOT}
  if a.baseline:
    trees[f"baseline {a.baseline}"] = export(a.baseline, os.path.join(out, "baseline"))
  env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  workdirs = {}
  for i, (name, tree) in enumerate(trees.items()):
    workdirs[name] = os.path.join(out, f"run{i}")
    run(tree, ["-m", "experiments.run", "--config", a.config, "--workdir", workdirs[name]], env)
  times = {name: [] for name in trees}
  for r in range(a.repeats):
    for name, tree in trees.items():
      line = run(tree, ["-c", _WORKER, workdirs[name]], env).strip().splitlines()[-1]
      times[name].append(json.loads(line)["eval_s"])
      print(f"repeat {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
  result = {"config": a.config, "repeats": a.repeats,
            "median_s": {n: statistics.median(t) for n, t in times.items()}, "times_s": times}
  for name, t in times.items():
    print(f"{name}: median {statistics.median(t):.2f} s of {a.repeats} cold evaluations")
  if a.baseline:
    base, this = (result["median_s"][n] for n in (f"baseline {a.baseline}", "this tree"))
    result["speedup"] = base / this
    print(f"speed-up: {base / this:.2f}x")
  with open(os.path.join(out, "eval_time.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {os.path.join(out, 'eval_time.json')}")


if __name__ == "__main__":
  main()
