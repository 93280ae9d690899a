"""benchmarks.gpu_check runs on a CPU too (quick sizes) and writes its report."""
import json
import os

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_reports(tmp_path):
  proc = run_cli("benchmarks.gpu_check", "--out", str(tmp_path), "--quick", timeout=600)
  assert proc.returncode == 0, proc.stderr
  r = json.load(open(os.path.join(tmp_path, "gpu_check.json")))
  assert r["precision"]["phase_max_err_rad"] < 1e-4  # float32 rounding, not TF32's 1e-2.
  assert r["precision"]["pixel_max_err_levels_product"] < 0.5
  assert r["precision"]["pixel_max_err_levels_direct"] < 0.5
  assert set(r["compress"]) == {"1", "2", "4"}
  assert all(c["steps_per_s"] > 0 for c in r["compress"].values())
  assert r["mnist_images_per_s"] > 0 and r["peak_memory_mib"] > 0
  assert "| compress.py:best, 4 image(s) at once |" in open(os.path.join(tmp_path, "gpu_check.md")).read()
