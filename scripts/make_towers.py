"""Builds the shipped synthetic towers (``fedjax_mm/assets/towers``), or checks them.

Pretrains the towers of every entry of ``SHIPPED`` with the project's own
pretraining code (``fedjax_mm.setups.fedma.tower_builds``) and writes each as
a checksummed ``.npz`` + manifest (``fedjax_mm.models.tower_artifacts``),
atomically. ``--check`` builds nothing: it verifies every shipped file's
SHA-256, that each entry (and every preset of the configs in ``CONFIG_FILES``)
has its artifact, and that no artifact is left over.

  PYTHONPATH=. JAX_PLATFORMS=cpu python scripts/make_towers.py            # all (~5 min)
  PYTHONPATH=. JAX_PLATFORMS=cpu python scripts/make_towers.py --check
  PYTHONPATH=. JAX_PLATFORMS=cpu python scripts/make_towers.py --only test_fedma \
      --cache ~/.cache/fedjax_mm   # reuse a build the demo cached on this machine
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedjax_mm import config_files  # noqa: E402
from fedjax_mm.models import tower_artifacts, towers  # noqa: E402
from fedjax_mm.setups import fedma  # noqa: E402

# The configs whose every preset must load shipped towers.
CONFIG_FILES = ("configs/fedma.py", "configs/fedma_demo.py", "configs/scenarios.py")
# Shipped entry -> (config, overrides). "configs": the one tower pair all of
# CONFIG_FILES share. "test_fedma": tests/test_fedma.py's tiny towers (seconds
# of pretraining there, but then the suite depends on the CPU too).
SHIPPED = {
    "configs": ("configs/fedma.py", {}),
    "test_fedma": ("configs/fedma.py:iid", {
        "data.public_vision_examples": 4000, "data.public_text_examples": 8000,
        "model.vision.width": 64, "model.vision.mlp_dim": 128, "model.vision.steps": 150,
        "model.lm.width": 64, "model.lm.mlp_dim": 256, "model.lm.steps": 400}),
}


def shipped_config(entry: str):
  """The run config of a ``SHIPPED`` entry."""
  path, overrides = SHIPPED[entry]
  config = config_files.load(ROOT / path)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _module(path: str):
  spec = importlib.util.spec_from_file_location("_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_presets() -> list[str]:
  """``'configs/x.py:preset'`` for every preset of ``CONFIG_FILES``."""
  out = []
  for path in CONFIG_FILES:
    # fedma_demo.py takes fedma.py's presets (it loads that file).
    presets = getattr(_module(path), "PRESETS", None) or _module("configs/fedma.py").PRESETS
    out += [f"{path}:{p}" for p in presets]
  return out


def check(root: Path) -> list[str]:
  """Problems with the shipped artifacts under ``root`` (empty: all good)."""
  problems, expected = [], set()
  for entry in SHIPPED:
    for name, cfg in fedma.tower_configs(shipped_config(entry)):
      manifest = tower_artifacts.paths(root, name, cfg)[1]
      expected.add(manifest.name)
      if not manifest.exists():
        problems.append(f"{entry}: no shipped {name} tower {manifest.name}")
        continue
      try:
        meta = tower_artifacts.verify(manifest)
      except ValueError as e:
        problems.append(str(e))
        continue
      if meta["config"] != tower_artifacts.config_dict(cfg):
        problems.append(f"{manifest}: config differs from {entry}'s current one")
  for preset in config_presets():
    for name, cfg in fedma.tower_configs(config_files.load(ROOT / preset)):
      if tower_artifacts.paths(root, name, cfg)[1].name not in expected:
        problems.append(f"{preset}: its {name} tower (hash {towers.config_hash(cfg)}) "
                        f"is not shipped")
  for manifest in sorted(root.glob("*.json")):
    if manifest.name not in expected:
      problems.append(f"{manifest}: left over (no entry of SHIPPED builds it)")
  return problems


def build(root: Path, entries: list[str], cache: str) -> None:
  for entry in entries:
    config = shipped_config(entry)
    for b in fedma.tower_builds(config, progress=True):
      params = towers.cached_params(cache, b.name, b.config, b.build, b.abstract)
      sequences = fedma.reference_sequences(config) if b.name == "lm" else None
      reference = tower_artifacts.reference_values(b.name, b.config, params, sequences)
      manifest = tower_artifacts.write(root, b.name, b.config, params, reference)
      meta = tower_artifacts.read_manifest(manifest)
      print(f"{entry}: wrote {manifest.name} + {meta['npz']} ({meta['npz_bytes']:,} bytes)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true", help="verify only, build nothing")
  parser.add_argument("--only", default=",".join(SHIPPED), help="comma-separated entries")
  parser.add_argument("--cache", default="",
                      help="reuse/keep local builds here ('': pretrain afresh in a temp dir)")
  parser.add_argument("--root", default=str(tower_artifacts.SHIPPED_DIR))
  args = parser.parse_args()
  root = Path(args.root)
  if args.check:
    problems = check(root)
    for line in problems:
      print(line)
    print(f"{len(problems)} problem(s)" if problems else f"all shipped towers check out ({root})")
    sys.exit(1 if problems else 0)
  entries = args.only.split(",")
  for entry in entries:
    if entry not in SHIPPED:
      parser.error(f"--only: {entry!r} is not one of {tuple(SHIPPED)}")
  with tempfile.TemporaryDirectory() as tmp:
    build(root, entries, args.cache or os.path.join(tmp, "cache"))


if __name__ == "__main__":
  main()
