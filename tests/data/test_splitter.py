import pytest
from hat_splitter import HATSplitter
from hypothesis import given, settings
from hypothesis import strategies as st

from hat_jax.data.splitter import BOS, EOD, PAD, WordSplitter, incomplete_utf8_tail

RULES = ["tfree", "whitespace"]
# Text that exercises the rules: letters of several scripts, digits, punctuation, spaces, newlines.
TEXT = st.text(alphabet=st.sampled_from(list("aAbBzZ09 .,;:!?'\"-_()\n\t") + ["é", "ß", "Ü", "你", "好", "ж", "😀", "\u00a0"]),
               max_size=60)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("max_bytes", [4, 7, 32])
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=80))
def test_round_trip_any_bytes(rule, max_bytes, data):
  words = WordSplitter(rule, max_bytes).split(data)
  assert b"".join(words) == data
  assert all(0 < len(w) <= max_bytes for w in words)


@pytest.mark.parametrize("rule", RULES)
@settings(max_examples=80, deadline=None)
@given(text=TEXT, cut=st.integers(0, 60))
def test_prefix_stable_at_character_boundaries(rule, text, cut):
  splitter = WordSplitter(rule, 16)
  full = splitter.split(text.encode())
  prefix = splitter.split(text[:cut].encode())
  if not prefix:
    return
  assert prefix[:-1] == full[:len(prefix) - 1]
  assert full[len(prefix) - 1].startswith(prefix[-1])


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_tfree_rule_is_the_authors_splitter_on_valid_text(text):
  assert WordSplitter("tfree", 24).split(text.encode()) == HATSplitter().split_with_limit(text, 24)


def test_known_splits():
  s = WordSplitter("tfree", 100)
  assert s.split(b"Hello, world!") == [b"Hello,", b" world!"]
  assert s.split(b"thisIsCamel") == [b"this", b"Is", b"Camel"]
  w = WordSplitter("whitespace", 100)
  assert w.split(b"  hello   world\nfoo") == [b"  ", b"hello   ", b"world\n", b"foo"]


def test_long_words_cut_at_character_boundaries():
  word = ("ü" * 10).encode()  # 20 bytes of 2-byte characters
  pieces = WordSplitter("whitespace", 5).split(word)
  assert [len(p) for p in pieces] == [4, 4, 4, 4, 4]
  assert all(p.decode() for p in pieces)  # every piece is valid UTF-8


@pytest.mark.parametrize("rule", RULES)
def test_special_and_invalid_bytes_are_one_byte_words(rule):
  data = bytes([BOS]) + b"ab" + bytes([0xFF, EOD]) + "é".encode()
  assert WordSplitter(rule, 8).split(data) == [bytes([BOS]), b"ab", bytes([PAD]), bytes([EOD]), "é".encode()]


@pytest.mark.parametrize("kwargs, error", [(dict(rule="bpe"), ValueError), (dict(max_word_bytes=3), ValueError),
                                           (dict(max_word_bytes=8.0), ValueError)])
def test_bad_splitter_config(kwargs, error):
  with pytest.raises(error):
    WordSplitter(**kwargs)


def test_split_rejects_text():
  with pytest.raises(TypeError, match="encode"):
    WordSplitter().split("text")


def test_finish_words_for_generation():
  s = WordSplitter("tfree", 8)
  assert s.finish_words(b" world", ord("!")) == [b" world!"]
  assert s.finish_words(b" world!", ord(" ")) == [b" world!", b" "]
  # An unfinished multi-byte character is never split off early...
  assert s.finish_words(b"caf", 0xC3) == [b"caf\xc3"]
  # ...and once it is whole the splitter decides (a CJK character is a word of its own).
  assert s.finish_words("你".encode()[:2], "你".encode()[2]) == ["你".encode()]
  # A word at max_word_bytes finishes with the next byte.
  assert s.finish_words(b"abcdefgh", ord("i")) == [b"abcdefgh", b"i"]


@pytest.mark.parametrize("data, n", [(b"caf\xc3", 1), ("你".encode()[:2], 2), (b"ab\xc3\xa9", 0), (b"\xff", 0),
                                     (b"\xed\xa0", 0), (b"", 0), (b"\xf0\x9f\x98", 3)])
def test_incomplete_utf8_tail(data, n):
  assert incomplete_utf8_tail(data) == n


def test_special_tokens_are_cut_out_first_as_one_byte_words():
  # The released TFree-HAT splitter: special_token_dict {"<|eot_id|>": 192}.
  splitter = WordSplitter("tfree", 16, {"<|eot_id|>": 192, "<|x|>": 7})
  assert splitter.split(b"Hi there<|eot_id|><|x|>ok<|eot_id|>") == [
      b"Hi", b" there", b"\xc0", b"\x07", b"ok", b"\xc0"]
  assert WordSplitter("tfree", 16).split(b"a<|x|>") != [b"a", b"\x07"]  # without them: ordinary text
  with pytest.raises(ValueError, match="map to a byte 0..255"):
    WordSplitter("tfree", 16, {"<|eot_id|>": 300})
