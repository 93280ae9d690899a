"""--set KEY=VALUE (benchmarks/settings.py): read as Python values, checked before any fit,
applied to every fit of stability, panel and rd, and one recipe per output directory."""
import json
import os

import pytest

from benchmarks import panel, settings, stability
from dfm_flax.errors import UserError
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
  monkeypatch.setattr("dfm_flax.train.train_and_evaluate", fake)
  return configs


def test_every_benchmark_fit_gets_the_settings(tmp_path, captured):
  from dfm_flax.rd_study import Study
  from dfm_flax import photos
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
  proc = run_cli("benchmarks.panel", "--out", out, "--images", "coffee", "--bpps", "0.3",
                 "--seeds", "0", "--set", "optim.eps=1e-3")
  assert "holds fits made with --set optim.eps=0.01" in error_line(proc)
  assert proc.returncode == 2
  proc = run_cli("benchmarks.stability", "--out", out, "--set", "optim.nope=1")
  assert "--set optim.nope=1" in error_line(proc)
  assert sorted(os.listdir(out)) == [settings.RECORD]  # No fit was started.
