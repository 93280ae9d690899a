"""The thesis-figure tools: Fig. 5.1's CSV, intervals and Fig. 5.2 picks (grid_figure), the
step-count study (grid_convergence), and Fig. 5.3's equal-size crops (equal_size)."""
import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import error_line, run_cli


def fake_run(root, name, width, depth, seed, loss, steps=100, history=None, recon=True):
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps({"seed": seed}))
  (d / "metrics.json").write_text(json.dumps({
      "model_width": width, "model_depth": depth, "final_loss": loss, "steps": steps,
      "psnr": 10 * math.log10(4 / loss), "percent_of_raw": 0.1 * width * depth,
      "seconds": 1.5}))
  if history:
    (d / "history.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n"
                                             for s, v in history))
  if recon:
    Image.fromarray(np.full((4, 4, 3), seed * 40, np.uint8)).save(d / "reconstruction.png")
  return d


def test_grid_csv_intervals_and_fig52_picks(tmp_path):
  runs = tmp_path / "grid"
  losses = {(2, 2): [0.2, 0.3], (2, 4): [0.05, 0.04], (4, 2): [0.004, 0.006], (4, 4): [5e-4, 7e-4]}
  for (w, d), ls in losses.items():
    for seed, loss in enumerate(ls):
      fake_run(runs, f"w{w}d{d}s{seed}", w, d, seed, loss)
  longer = fake_run(tmp_path / "longer", "w4d4_long", 4, 4, 0, 3e-4)  # only a Fig. 5.2 candidate
  out = tmp_path / "fig.png"
  proc = run_cli("experiments.grid_figure", str(runs), "--out", str(out), "--csv",
                 str(tmp_path / "runs.csv"), "--examples", str(tmp_path / "ex.png"),
                 "--examples_from", str(tmp_path / "longer"))
  assert proc.returncode == 0, proc.stderr
  rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
  assert len(rows) == 8
  assert {(int(r["width"]), int(r["depth"]), int(r["seed"])) for r in rows} == {
      (w, d, s) for (w, d) in losses for s in (0, 1)}
  row = next(r for r in rows if r["width"] == "4" and r["depth"] == "2" and r["seed"] == "1")
  assert float(row["final_loss"]) == pytest.approx(0.006)
  assert float(row["psnr"]) == pytest.approx(10 * math.log10(4 / 0.006), abs=1e-3)
  # Cell means: 0.25, 0.045, 0.005, 6e-4 -> one cell in each decade interval.
  assert "| 2 | 0.40% / 0.2500 / " in proc.stdout and "0.0006 / " in proc.stdout
  assert os.path.getsize(out) > 5000 and os.path.getsize(tmp_path / "ex.png") > 5000
  # The best interval's middle is 10^-3.5: the extra run (3e-4) is nearer than 5e-4 and 7e-4.
  assert f"Fig. 5.2, loss < 0.001: {longer}" in proc.stdout
  assert f"Fig. 5.2, loss >= 0.1: {runs / 'w2d2s1'}" in proc.stdout  # 0.3 nearer 10^-0.5
  grid = proc.stdout[proc.stdout.index("| depth"):]
  assert "0.0006 / " in grid and "0.0003" not in grid  # the extra run is not in the grid


def test_interval_edges_and_nearest_pick():
  from experiments import grid_figure
  bounds = [0.1, 0.01, 0.001]
  assert [grid_figure.interval(v, bounds) for v in (0.5, 0.1, 0.05, 0.002, 1e-4)] == [0, 0, 1, 2, 3]
  assert grid_figure.interval_names(bounds) == [">= 0.1", "0.01 - 0.1", "0.001 - 0.01", "< 0.001"]
  runs = [{"final_loss": v, "id": v} for v in (0.9, 0.2, 0.05, 0.011, 0.0032, 0.002)]
  # Middles (log10): 1.0 -> 0.3162, 0.0316, 0.00316; the empty last interval is skipped.
  assert [(k, r["id"]) for k, r in grid_figure.picks(runs, bounds)] == [(0, 0.2), (1, 0.05), (2, 0.0032)]


def test_grid_figure_refuses_bad_edges(tmp_path):
  fake_run(tmp_path / "g", "a", 2, 2, 0, 0.1)
  line = error_line(run_cli("experiments.grid_figure", str(tmp_path / "g"), "--out",
                            str(tmp_path / "f.png"), "--intervals", "0.01,0.1"))
  assert "must decrease" in line


def test_convergence_reads_long_runs_and_lengths(tmp_path):
  from studies import grid_convergence as gc
  root = tmp_path / "conv"
  # One long constant-lr run per cell: the loss at each count from the history (mean of 5).
  fake_run(root, "a", 2, 2, 0, 0.1, steps=400,
           history=[(s, 1.0 / s) for s in range(50, 401, 50)])
  fake_run(root, "b", 4, 4, 0, 0.01, steps=400,
           history=[(s, 2.0 / s) for s in range(50, 401, 50)])
  # Several lengths of one cell: read from their final metrics.
  for steps, loss in ((100, 0.02), (400, 0.001)):
    fake_run(root, f"c{steps}", 6, 6, 0, loss, steps=steps, recon=False)
  cells = gc._runs(str(root))
  losses = gc.curves(cells, [100, 400])
  assert losses[(2, 2)][100] == pytest.approx(np.mean([1 / 50, 1 / 100]))
  assert losses[(2, 2)][400] == pytest.approx(np.mean([1.0 / s for s in (200, 250, 300, 350, 400)]))
  assert losses[(6, 6)] == {100: 0.02, 400: 0.001}
  seeds = {(8, 8): [(400, 0.002, "x"), (400, 0.004, "y")]}  # seeds of one length: averaged
  assert gc.curves(seeds, [100, 400]) == {(8, 8): {400: pytest.approx(0.003)}}
  tau = gc.ranking_agreement(losses)
  # At 100 steps 6x6 (0.02) sits between 2x2 (0.015) and 4x4 (0.03); at 400 it is best.
  assert tau[400] == pytest.approx(1.0)
  assert tau[100] == pytest.approx(1 / 3)
  proc = run_cli("studies.grid_convergence", str(root), "--counts", "100,400",
                 "--out", str(tmp_path / "c.png"))
  assert proc.returncode == 0, proc.stderr
  assert "| Kendall tau vs longest | 0.33 | 1.00 |" in proc.stdout


def test_equal_size_crop_is_the_share_asked_for(tmp_path):
  from dfm_flax.nets import fourier
  from studies import equal_size
  n = fourier.num_params(8, 6, 3)
  side = equal_size.side_for(n, 18)
  assert side == 365 and 4 * n / (side * side * 3) == pytest.approx(0.18, abs=0.001)
  path = equal_size.crop("coffee", 100, str(tmp_path))
  from dfm_flax.data import photos
  full = photos.pixels("coffee")
  top, left = (full.shape[0] - 100) // 2, (full.shape[1] - 100) // 2
  np.testing.assert_array_equal(np.asarray(Image.open(path)), full[top:top + 100, left:left + 100])
  from dfm_flax.errors import UserError
  with pytest.raises(UserError, match="grey"):
    equal_size.crop("camera", 100, str(tmp_path))
  with pytest.raises(UserError, match="smaller"):
    equal_size.crop("chelsea", 400, str(tmp_path))
