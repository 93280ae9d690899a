"""The README and docs/ stay true: links resolve, commands name configs, variants and keys
that exist, and every module they run answers --help."""
import concurrent.futures
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

from experiments.cli import config_variants
from tests.helpers import ROOT

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
  with open(path) as f:
    return {slug(line.lstrip("#")) for line in f if line.startswith("#")}


def broken_links(page: str, text: str) -> list[str]:
  """Relative links of `text` (the page at `page`) whose file or heading does not exist."""
  bad = []
  for target in LINK.findall(text):
    if re.match(r"[a-z]+://|mailto:", target):
      continue
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(full):
      bad.append(f"{target}: no such file")
    elif anchor and full.endswith(".md") and anchor not in anchors(full):
      bad.append(f"{target}: no such heading")
  return bad


def commands(text: str) -> list[list[str]]:
  """Every `python -m ...` command of a page, continuation lines joined, as tokens."""
  text = text.replace("\\\n", " ")
  found = []
  for line in text.splitlines():
    for match in re.finditer(r"python -m [\w.]+[^`|#\n]*", line):
      try:
        found.append(shlex.split(match.group(0))[2:])
      except ValueError:  # an unbalanced quote in prose
        found.append(match.group(0).split()[2:])
  return found


def _config(path_variant: str):
  path, _, variant = path_variant.partition(":")
  spec = importlib.util.spec_from_file_location("docs_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def stale_config_uses(tokens: list[str]) -> list[str]:
  """What a command says of configs that is not so: a missing file, an unknown variant, a
  --config.KEY the config lacks."""
  module, args = tokens[0], tokens[1:]
  if module not in ("experiments.run", "experiments.codec"):
    return []
  config = "experiments/compress.py:codec" if module == "experiments.codec" else None
  for i, arg in enumerate(args):
    if arg == "--config" and i + 1 < len(args):
      config = args[i + 1]
  if config is None or "NAME" in config:  # the generic form of the README
    return []
  path, _, variant = config.partition(":")
  if not os.path.exists(os.path.join(ROOT, path)):
    return [f"{config}: no such config file"]
  variants = config_variants(os.path.join(ROOT, path)) or {}
  if variant not in variants:
    return [f"{config}: no variant {variant!r}"]
  c, bad = _config(config), []
  for arg in args:
    if arg.startswith("--config.") and "=" in arg and "KEY" not in arg:
      node = c
      for part in arg[len("--config."):].partition("=")[0].split("."):
        if not hasattr(node, "keys") or part not in node:
          bad.append(f"{config}: no key {arg.partition('=')[0][2:]}")
          break
        node = node[part]
  return bad


def page_texts():
  for page in PAGES:
    with open(page) as f:
      yield page, f.read()


def test_every_relative_link_resolves():
  bad = [f"{os.path.relpath(p, ROOT)}: {b}" for p, t in page_texts() for b in broken_links(p, t)]
  assert bad == []


def test_every_run_command_names_configs_variants_and_keys_that_exist():
  bad = [f"{os.path.relpath(p, ROOT)}: {b}" for p, t in page_texts()
         for tokens in commands(t) for b in stale_config_uses(tokens)]
  assert bad == []


def test_every_module_the_docs_run_answers_help():
  modules = sorted({tokens[0] for _, t in page_texts() for tokens in commands(t)
                    if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", tokens[0])})
  assert "experiments.run" in modules and len(modules) > 10

  def help_of(module):
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return module, proc.returncode, proc.stdout + proc.stderr

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(help_of, modules))
  failed = [f"{m} (exit {rc}): {out[-300:]}" for m, rc, out in results
            if rc != 0 or "usage" not in out.lower() and "flags" not in out.lower()]
  assert failed == []


def test_run_help_lists_every_variant_of_every_config():
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  text = " ".join(proc.stdout.split())
  for path in glob.glob(os.path.join(ROOT, "experiments", "*.py")):
    variants = config_variants(path)
    for variant in variants or ():
      if variant:
        assert variant in text, (path, variant)
      _config(f"experiments/{os.path.basename(path)}:{variant}")  # every listed variant builds


def test_the_checks_find_a_stale_key_a_stale_variant_and_a_broken_link(tmp_path):
  page = str(tmp_path / "page.md")
  (tmp_path / "there.md").write_text("# A heading\n")
  text = ("See [here](there.md#a-heading), [gone](missing.md) and [no anchor](there.md#nope).\n"
          "```\npython -m experiments.run --config experiments/compress.py:best --workdir d \\\n"
          "    --config.model.widht=6 --config.train.steps=10\n"
          "python -m experiments.run --config experiments/mnist.py:bset --workdir d\n```\n")
  assert broken_links(page, text) == ["missing.md: no such file", "there.md#nope: no such heading"]
  found = [b for tokens in commands(text) for b in stale_config_uses(tokens)]
  assert found == ["experiments/compress.py:best: no key config.model.widht",
                   "experiments/mnist.py:bset: no variant 'bset'"]


def test_no_page_cites_a_ticket_number():
  """The pages describe the project, not the tracker: no '#12'-style references."""
  assert [os.path.relpath(p, ROOT) for p, t in page_texts()
          if re.search(r"(?<![\w&/])#\d+\b", t)] == []
