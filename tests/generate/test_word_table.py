"""The device's word table (`hat_jax.generate.word_table`) against `hat-splitter` itself: every decision the
table makes (CONT, CONT_LEN, SPLIT, and the class of the new current word) must be what
`WordSplitter.finish_words` answers, for random words of every class, random bytes, and real text."""

import glob
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hat_jax.data.splitter import WordSplitter
from hat_jax.generate import word_table as wt

M = 8


def check_step(table, splitter, word: bytes, byte: int) -> list[bytes]:
  """One generation step: the table's answer (where it gives one) equals the splitter's. Returns the split."""
  state = table.classify(word)
  expected = splitter.finish_words(word, byte)
  out, nxt = table.decide(state, len(word), byte)
  new = word + bytes([byte])
  if out == wt.CONT:
    assert expected == [new], (wt.STATES[state], word, byte, expected)
  elif out == wt.SPLIT:
    assert expected == [word, bytes([byte])], (wt.STATES[state], word, byte, expected)
  if out != wt.HOST:
    assert table.classify(expected[-1]) == nxt, (wt.STATES[state], word, byte, wt.STATES[nxt])
  return expected


def walk(table, splitter, data: bytes) -> np.ndarray:
  """The sampler's word process over data; returns the count of each outcome."""
  counts = np.zeros(4, int)
  word = data[:1]
  for byte in data[1:]:
    state = table.classify(word)
    counts[table.decide(state, len(word), byte)[0]] += 1
    word = check_step(table, splitter, word, byte)[-1]
  return counts


RULES = ["tfree", "whitespace"]


@pytest.mark.parametrize("rule", RULES)
def test_every_byte_after_words_of_every_class(rule):
  """For each class: random words of that class (built from its pattern) followed by each of the 256 bytes."""
  splitter = WordSplitter(rule, max_word_bytes=M)
  table = wt.word_table(splitter)
  rnd = random.Random(0)
  alphabet = [bytes([b]) for b in range(256)]
  pools = {}
  # Short words over a skewed alphabet (letters, digits, punctuation, spaces, controls, high bytes) land
  # in every class; keep those the table classifies, up to 40 per class.
  common = [bytes([b]) for b in b"aZq9 .,!'\"(-_$+|\n\t\x01\x0b\r"] + [b"\xc3", b"\xa9", b"\xe2\x82", b"\xf0\x9f\x98",
                                                                          b"\xff", b"\xc0"]
  for _ in range(20000):
    n = rnd.randint(1, M + 2)
    word = b"".join(rnd.choice(common if rnd.random() < 0.9 else alphabet) for _ in range(n))
    if rnd.random() < 0.3:
      word = b" " + word
    pools.setdefault(table.classify(word), []).append(word)
  covered = {wt.STATES[s] for s in pools}
  wanted = ({"SP1", "SPN", "NL", "WL", "WU", "WP", "BYTE1", "XS1", "XW1"} if rule == "tfree" else {"N", "NW", "S0", "BYTE1"})
  assert wanted | {"U2", "U3", "U3b", "U4", "U4b", "U4c"} <= covered, covered
  for state, words in pools.items():
    for word in words[:40]:
      for byte in range(256):
        check_step(table, splitter, word, byte)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=64))
def test_random_bytes(data):
  for rule in RULES:
    splitter = WordSplitter(rule, max_word_bytes=M)
    walk(wt.word_table(splitter), splitter, data)


_TFREE_WORDS = {  # class -> a pattern for hypothesis.from_regex (latin-1 text)
    "WL": r" ?[A-Z0-9]{0,3}[a-z0-9]{0,4}[a-z]", "WU": r" ?[a-z0-9]{0,3}[A-Z0-9]{1,4}",
    "WP": r" ?([A-Za-z]{0,4}|[$+<>|~^`=])[!-/:;?@\[\]_{}]{1,3}", "SPN": r"  {1,6}", "XS1": r" ?[$+<>|~^`=\x01\x7f]",
}


@pytest.mark.parametrize("name", sorted(_TFREE_WORDS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_words_from_class_patterns(name, data):
  splitter = WordSplitter("tfree", max_word_bytes=M)
  table = wt.word_table(splitter)
  word = data.draw(st.from_regex(_TFREE_WORDS[name], fullmatch=True)).encode("latin-1")
  if table.classify(word) == wt.S["OTHER"]:
    return  # e.g. a lowercase letter right before an uppercase one: not a current word of this class
  for byte in range(256):
    check_step(table, splitter, word, byte)


def _corpus_text(name: str, limit: int) -> bytes | None:
  if name == "checked_in":  # always there (CI prepares no corpus): English prose and a German sentence
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "data", "score_sample.txt"), "rb") as f:
      return f.read()[:limit] + " Grüße aus Köln: Straßenbahn, Äpfel & Öl — 3,5 € (ca. 20 %).".encode()
  paths = sorted(glob.glob(f"data_cache/processed/{name}/validation.bin"))
  return open(paths[0], "rb").read()[:limit] if paths else None


@pytest.mark.parametrize("corpus", ["checked_in", "english", "man_de", "lohelp_de"])
def test_real_text(corpus):
  text = _corpus_text(corpus, 60_000)
  if text is None:
    pytest.skip(f"corpus {corpus} not prepared (python -m hat_jax.data prepare ...)")
  for rule in RULES:
    splitter = WordSplitter(rule, max_word_bytes=24)
    counts = walk(wt.word_table(splitter), splitter, text)
    if corpus == "english":
      assert counts[wt.HOST] / counts.sum() < 0.01, counts  # the host is rarely needed on English text


def test_special_tokens():
  """A token that cannot occur inside a decided c + x costs nothing; one that can sends its bytes to the host."""
  released = WordSplitter("tfree", M, {"<|eot_id|>": 192})
  assert wt.word_table(released).host_bytes == frozenset(b"\r")
  plain = WordSplitter("tfree", M, {"ab": 192})
  table = wt.word_table(plain)
  assert {ord("a"), ord("b")} <= table.host_bytes
  for data in (b"xab cab abab <|eot_id|>", b"hello ab, ab!"):
    walk(table, plain, data)
    walk(wt.word_table(released), released, data + b" x<|eot_id|>y")
