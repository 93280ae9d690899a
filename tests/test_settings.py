"""--set KEY=VALUE (experiments/settings.py): read as Python values, checked before any fit,
applied to every fit of stability, panel and rd, and one recipe per output directory."""
import json
import os

import pytest

from dfm_flax.errors import UserError
from experiments import settings
from studies import panel, stability
from tests.helpers import error_line, run_cli


def test_values_are_read_as_python_and_bad_ones_refused():
  got = settings.parse(["optim.b1=0.95", "optim.update_clip=0", "guard.mode=recover",
                        "model.coord_range=(0.0, 1.0)"])
  assert got == {"optim.b1": 0.95, "optim.update_clip": 0, "guard.mode": "recover",
                 "model.coord_range": (0.0, 1.0)}
  assert settings.parse(["train.quiet=False"])["train.quiet"] is False  # not bool("False")
  for bad in ["optim.epss=1", "optim.b1=abc", "optim.b1", "optim=1"]:
    with pytest.raises(UserError, match=bad.replace(".", r"\.")):
      settings.parse([bad])


def test_a_directory_keeps_the_settings_of_its_first_command(tmp_path):
  out = str(tmp_path / "panel")
  first = settings.recorded(out, ["optim.eps=1e-2", "model.coord_range=(0.0, 1.0)"])
  assert first == {"optim.eps": 0.01, "model.coord_range": (0.0, 1.0)}
  # The same settings again (the tuple read back from JSON as a list) resume the directory.
  assert settings.recorded(out, ["optim.eps=1e-2", "model.coord_range=(0.0, 1.0)"]) == first
  for other in (["optim.eps=1e-3"], []):
    with pytest.raises(UserError, match="holds fits made with --set optim.eps=0.01"):
      settings.recorded(out, other)
  with open(os.path.join(out, settings.RECORD)) as f:  # The record was not changed.
    assert json.load(f) == {"optim.eps": 0.01, "model.coord_range": [0.0, 1.0]}


class _Captured(Exception):
  pass


@pytest.fixture
def captured(monkeypatch):
  """Each config train_and_evaluate is called with; the call raises, so nothing trains."""
  configs = []

  def fake(config, workdir):
    configs.append(config)
    raise _Captured
  monkeypatch.setattr("dfm_flax.loop.train.train_and_evaluate", fake)
  return configs


def test_every_benchmark_fit_gets_the_settings(tmp_path, captured):
  from dfm_flax.data import photos
  from experiments.rd_study import Study
  over = {"optim.eps": 0.01, "optim.b1": 0.9}
  path = photos.path("coffee", str(tmp_path / "images"))
  calls = [
      lambda: stability.run_cell(str(tmp_path / "s"), "coffee", 6, 6, 0.2, 0, 50, over),
      lambda: panel.fit_and_code(str(tmp_path / "p"), "coffee", 0.3, 0, 50, 0, overrides=over),
      lambda: Study(str(tmp_path / "r"), settings=tuple(over.items())).fit(
          path, str(tmp_path / "r" / "run"), {"model.width": 5, "model.depth": 4})]
  for call in calls:
    with pytest.raises(_Captured):
      call()
  for c in captured:
    assert (c.optim.eps, c.optim.b1) == (0.01, 0.9)
  # Each benchmark's own per-fit settings still apply.
  assert captured[0].optim.lr == 0.2 and captured[2].model.width == 5
  # The rd study's SIREN baseline is another model: compress.py:best's settings skip it.
  with pytest.raises(_Captured):
    Study(str(tmp_path / "r"), settings=(("optim.eps", 0.01),)).fit(
        path, str(tmp_path / "r" / "siren"), {"model.kind": "siren"})
  assert captured[-1].optim.eps == 1e-8


def test_panel_refuses_other_settings_in_one_line_before_any_fit(tmp_path):
  out = str(tmp_path / "panel")
  settings.recorded(out, ["optim.eps=1e-2"])
  proc = run_cli("studies.panel", "--out", out, "--images", "coffee", "--bpps", "0.3",
                 "--seeds", "0", "--set", "optim.eps=1e-3")
  assert "holds fits made with --set optim.eps=0.01" in error_line(proc)
  assert proc.returncode == 2
  proc = run_cli("studies.stability", "--out", out, "--set", "optim.nope=1")
  assert "--set optim.nope=1" in error_line(proc)
  assert sorted(os.listdir(out)) == [settings.RECORD]  # No fit was started.


def _row(image, bpp, seed, psnr, got_bpp, jpeg="", webp="", collapsed=False, recoveries=0):
  return {"image": image, "pixels": "10x10x1", "target_bpp": bpp, "seed": seed, "net": "6x5",
          "bits": 10, "bytes": 100, "bpp": got_bpp, "psnr": psnr, "float_psnr": psnr,
          "recoveries": recoveries, "collapsed": collapsed, "jpeg_psnr": jpeg, "jpeg_bytes": "",
          "webp_psnr": webp, "webp_bytes": "", "seconds": 1.0}


def test_panel_table_counts_collapses_by_the_issues_rule_and_sizes_by_ten_percent():
  rows = [_row("moon", 0.3, 0, 33.0, 0.31, 41.0, 43.0),
          _row("moon", 0.3, 1, 29.5, 0.33, 41.0, 43.0),  # 3.5 dB below the best seed
          _row("moon", 0.3, 2, 32.0, 0.2699, 41.0, 43.0, recoveries=1),
          _row("text", 0.3, 0, 26.5, 0.30, 27.0, "", collapsed="True"),
          _row("text", 0.1, 0, 24.0, 0.1)]
  lines = panel.table(rows).splitlines()
  moon = next(line for line in lines if line.startswith("| moon"))
  text = next(line for line in lines if line.startswith("| text | 10x10x1 | 0.3"))
  # moon: one seed more than 3 dB below its best; one rollback; DFM - JPEG = mean - 41.
  assert moon.split(" | ")[6:9] == ["1", "1", "41.00"] and moon.endswith("| -9.50 |")
  assert text.split(" | ")[6] == "1"  # the guard's own verdict
  got = panel.summary(rows).splitlines()
  assert got[0] == ("0.1 bpp: 1 fits, 1 within 10% of the target; JPEG is never that small; "
                    "WebP is never that small")
  # 0.33 and 0.2699 are outside 10% of 0.3; the mean gain is over the four with a JPEG.
  # (33 + 29.5 + 32 + 26.5) / 4 - (41 * 3 + 27) / 4 = -7.25; WebP: 43 - moon's mean 31.5.
  assert got[1] == ("0.3 bpp: 4 fits, 2 within 10% of the target; DFM - JPEG -7.25 dB over 4 "
                    "fits where JPEG is that small; WebP - DFM +11.50 dB over 3 fits")


def test_panel_keeps_the_two_grids_apart():
  # Rows of the uniform grid (also old rows without the field) and of the sensitivity grid
  # of the same photograph and size are two lines, the second labelled.
  rows = [_row("moon", 0.3, 0, 33.0, 0.31), dict(_row("moon", 0.3, 1, 32.0, 0.30), grid="uniform"),
          dict(_row("moon", 0.3, 0, 34.0, 0.30), grid="sensitivity")]
  lines = [line for line in panel.table(rows).splitlines() if line.startswith("| moon")]
  assert [line.split(" | ")[3] for line in lines] == ["6x5", "6x5, sensitivity grid"]
  assert [line.split(" | ")[5] for line in lines] == ["33.00, 32.00", "34.00"]
  assert panel.cell_name("moon", 0.3, 0) == "moon_0.3bpp_s0"
  assert panel.cell_name("moon", 0.3, 0, "sensitivity") == "moon_0.3bpp_s0_sensitivity"
