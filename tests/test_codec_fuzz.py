"""Hostile .dfm files: crafted with valid CRCs, each is decoded or refused in one line."""
import json

from tests.helpers import run_cli


def test_crafted_files_are_refused_with_one_error_and_bounded_memory():
  proc = run_cli("tests.fuzz_dfm", timeout=600)
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["other"] == [], report["other"]
  assert report["tried"] > 1000
  assert report["refused"] > 0.5 * report["tried"]
  assert report["decoded"] >= 3  # The valid files still decode.
  assert report["rss_growth_mib"] < 300
