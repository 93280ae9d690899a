"""studies/stability.py's report: cells judged collapsed, and two recipes paired cell by cell."""
import csv
import json
import os

from studies import stability


def fake_cell(out, image, w, d, lr, seed, psnrs, collapsed=False):
  """A finished cell: its logged PSNRs and its final metrics, as train_and_evaluate leaves them."""
  wd = stability.cell_dir(out, image, w, d, lr, seed)
  os.makedirs(wd)
  with open(os.path.join(wd, "history.jsonl"), "w") as f:
    for i, p in enumerate(psnrs):
      f.write(json.dumps({"step": 100 * (i + 1), "psnr": p}) + "\n")
  with open(os.path.join(wd, "metrics.json"), "w") as f:
    json.dump({"psnr": psnrs[-1], "collapsed": collapsed, "seconds": 1.0}, f)


def test_against_pairs_the_same_cells_and_keeps_each_recipes_verdict(tmp_path):
  base, mine = str(tmp_path / "base"), str(tmp_path / "mine")
  # Base: the 7x8 cell reported collapsed by the guard; the 8x7 cell fell from 40 dB to
  # the flat image's level at its last step, unreported: the report's own rule must catch it.
  fake_cell(base, "clock", 7, 8, 0.1, 0, [30.0, 40.0, 21.7], collapsed=True)
  fake_cell(base, "clock", 8, 7, 0.1, 0, [30.0, 40.0, 21.8])
  fake_cell(mine, "clock", 7, 8, 0.1, 0, [30.0, 41.0, 42.0])
  fake_cell(mine, "clock", 8, 7, 0.1, 0, [30.0, 39.0, 39.5])
  fake_cell(mine, "clock", 6, 6, 0.1, 0, [30.0, 35.0, 36.0])  # Not run under the base recipe.
  cells = [("clock", (7, 8), 0.1, 0), ("clock", (8, 7), 0.1, 0), ("clock", (6, 6), 0.1, 0)]

  pairs = stability.write_against(mine, base, ["old", "new"], stability.done_rows(mine, cells))

  assert [(p[0]["width"], p[0]["depth"]) for p in pairs] == [(7, 8), (8, 7)]
  with open(os.path.join(mine, "compare.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["width"], r["psnr (old)"], r["collapsed (old)"], r["psnr (new)"], r["collapsed (new)"])
          for r in rows] == [("7", "21.7", "True", "42.0", "False"),
                             ("8", "21.8", "True", "39.5", "False")]
  assert os.path.getsize(os.path.join(mine, "compare.png")) > 0
