"""benchmarks/render_speed.py: one row per (net, chunk), both ways timed."""
import re

from tests.helpers import run_cli


def test_render_speed_prints_a_row_per_net_and_chunk():
  proc = run_cli("benchmarks.render_speed", "--nets", "3x3,5x4", "--chunks", "64,256",
                 "--size", "16x24", "--repeats", "1")
  assert proc.returncode == 0, proc.stderr
  rows = re.findall(r"^\s*(\dx\d)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x$", proc.stdout, re.M)
  assert [(net, int(chunk)) for net, chunk, *_ in rows] == [("3x3", 64), ("3x3", 256),
                                                            ("5x4", 64), ("5x4", 256)]
  for *_, off, on, ratio in rows:  # The ratio is the two rates' (to the printed rounding).
    assert abs(float(ratio) - int(on.replace(",", "")) / int(off.replace(",", ""))) < 0.006
  assert "16x24 pixels" in proc.stdout
