"""Time the evaluation at the end of a cold run, in this tree and, with --baseline REV,
in another revision of the project, alternated.

  python -m benchmarks.eval_time [--config experiments/mnist.py:smoke] [--repeats 5]
                                 [--baseline REV]

Each repeat starts a fresh process per tree that runs the whole config
(`train.train_and_evaluate` in a new workdir, W&B off), as a user's run does, and times
`task.evaluate` inside it: the wait between the last training step and the final metrics.
Work a tree overlaps with training (imports started early) counts as saved; work it only
moves earlier does not, since it still runs in the same process. Prints the median and
every timing per tree and, with a baseline, the speed-up; writes OUT/eval_time.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Wraps tasks.make so that the run's own call of task.evaluate is timed; both trees'
# train loops call tasks.make(config) and then task.evaluate(model, workdir). It loads the
# config file itself, not with files.load_config, which older baselines do not have.
_WORKER = """
import importlib.util, json, sys, time
from dfm_flax import tasks, train
path, variant, workdir = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("config_module", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(variant) if variant else module.get_config()
make, seconds = tasks.make, {}
def timed_make(c):
  task = make(c)
  evaluate = task.evaluate
  def timed(model, wd):
    tic = time.perf_counter()
    out = evaluate(model, wd)
    seconds["eval_s"] = time.perf_counter() - tic
    return out
  task.evaluate = timed
  return task
tasks.make = timed_make
tic = time.perf_counter()
train.train_and_evaluate(config, workdir)
print(json.dumps({"eval_s": seconds["eval_s"], "run_s": time.perf_counter() - tic}))
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
  path, _, variant = a.config.partition(":")
  times = {name: [] for name in trees}
  runs = {name: [] for name in trees}
  for r in range(a.repeats):
    for i, (name, tree) in enumerate(trees.items()):
      workdir = os.path.join(out, f"run{i}_{r}")
      line = json.loads(run(tree, ["-c", _WORKER, path, variant, workdir], env).strip().splitlines()[-1])
      times[name].append(line["eval_s"])
      runs[name].append(line["run_s"])
      print(f"repeat {r + 1}: {name}: evaluation {line['eval_s']:.2f} s "
            f"(whole run {line['run_s']:.1f} s)", flush=True)
  result = {"config": a.config, "repeats": a.repeats,
            "median_s": {n: statistics.median(t) for n, t in times.items()}, "times_s": times,
            "run_median_s": {n: statistics.median(t) for n, t in runs.items()}, "run_s": runs}
  for name, t in times.items():
    print(f"{name}: median {statistics.median(t):.2f} s of {a.repeats} end-of-run evaluations; "
          f"whole run median {statistics.median(runs[name]):.1f} s")
  if a.baseline:
    base, this = (result["median_s"][n] for n in (f"baseline {a.baseline}", "this tree"))
    result["speedup"] = base / this
    print(f"speed-up: {base / this:.2f}x")
  with open(os.path.join(out, "eval_time.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {os.path.join(out, 'eval_time.json')}")


if __name__ == "__main__":
  main()
