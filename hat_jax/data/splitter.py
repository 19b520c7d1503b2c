"""Word splitting: bytes -> words, the only non-learned step of HAT.

Two rules:
  * "tfree" (default): the released TFree-HAT rule, delegated to the authors' own Rust implementation
    (`hat-splitter` on PyPI): UAX#29 word bounds, split after punctuation, camelCase split, one leading
    space joins the next word, trailing punctuation stays, long words cut at UTF-8 boundaries.
  * "whitespace": the paper's main rule: split at Unicode whitespace, which is appended to the
    previous word.

Both work on ANY byte string, invalid UTF-8 included: undecodable bytes (which also covers our special
tokens, chosen from byte values that never occur in UTF-8) become one-byte words of their own, and
`b"".join(split(x)) == x` always. Both rules are causal (prefix-stable) at character boundaries: the
words of a prefix are the words of the whole text, except that the last one may still grow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from hat_splitter import HATSplitter

# Byte values that never occur in valid UTF-8 (0xC0, 0xC1, 0xF5..0xFF), so they cannot collide with text.
BOS = 0xC1  # begin of document
EOD = 0xC0  # end of document (TFree-HAT's <|eot_id|> byte)
END_OF_WORD = 0xF5  # the paper variant's [W] token
PAD = 0xFF
SPECIAL_BYTES = frozenset({BOS, EOD, END_OF_WORD, PAD})
VOCAB_SIZE = 256

SPLIT_RULES = ("tfree", "whitespace")
_MIN_WORD_BYTES = 4  # one UTF-8 character must fit in a word, or characters would be cut apart
_UNDECODABLE = re.compile("([\udc80-\udcff])")  # bytes that `surrogateescape` could not decode
_WHITESPACE_WORD = re.compile(r"\s+|\S+\s*")


@functools.cache
def _hat_splitter() -> HATSplitter:
  return HATSplitter()


def _chunk_utf8(word: bytes, max_bytes: int) -> list[bytes]:
  """Greedy cut of one word into pieces of at most max_bytes, never inside a UTF-8 character."""
  pieces = []
  while len(word) > max_bytes:
    cut = max_bytes
    while cut > 0 and (word[cut] & 0xC0) == 0x80:  # continuation byte: back off to the char start
      cut -= 1
    cut = cut or max_bytes
    pieces.append(word[:cut])
    word = word[cut:]
  pieces.append(word)
  return pieces


class WordSplitter:
  """Splits byte strings into words of at most `max_word_bytes` bytes."""

  def __init__(self, rule: str = "tfree", max_word_bytes: int = 32, special_tokens: Mapping[str, int] | None = None):
    """`special_tokens` ({"<|eot_id|>": 192}, the released TFree-HAT's `special_token_dict`): each occurrence
    of a token's text is cut out first and becomes the one-byte word of its id, as the released splitter
    does; the text between goes through the rule."""
    if rule not in SPLIT_RULES:
      raise ValueError(f"Unknown split rule {rule!r}; choose one of {SPLIT_RULES}.")
    if not isinstance(max_word_bytes, int) or max_word_bytes < _MIN_WORD_BYTES:
      raise ValueError(
          f"max_word_bytes must be an int >= {_MIN_WORD_BYTES} (one UTF-8 character), got {max_word_bytes!r}.")
    self.rule = rule
    self.max_word_bytes = max_word_bytes
    self.special_tokens = {str(k).encode(): int(v) for k, v in dict(special_tokens or {}).items()}
    for token, byte in self.special_tokens.items():
      if not token or not 0 <= byte < VOCAB_SIZE:
        raise ValueError(f"special token {token!r} -> {byte}: tokens must be non-empty and map to a byte 0..255.")
    self._special = re.compile(b"|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True))
                               ) if self.special_tokens else None

  def _split_text(self, text: str) -> list[bytes]:
    if self.rule == "tfree":
      return _hat_splitter().split_with_limit(text, self.max_word_bytes)
    return [p for w in _WHITESPACE_WORD.findall(text) for p in _chunk_utf8(w.encode(), self.max_word_bytes)]

  def split(self, data: bytes) -> list[bytes]:
    if not isinstance(data, (bytes, bytearray)):
      raise TypeError(f"WordSplitter.split takes bytes, got {type(data).__name__}; encode text with .encode('utf-8').")
    if self._special is not None:
      words: list[bytes] = []
      start = 0
      for match in self._special.finditer(bytes(data)):
        words.extend(self._split_plain(bytes(data[start:match.start()])))
        words.append(bytes([self.special_tokens[match.group()]]))
        start = match.end()
      return words + self._split_plain(bytes(data[start:]))
    return self._split_plain(bytes(data))

  def _split_plain(self, data: bytes) -> list[bytes]:
    words: list[bytes] = []
    for piece in _UNDECODABLE.split(bytes(data).decode("utf-8", errors="surrogateescape")):
      if not piece:
        continue
      if _UNDECODABLE.fullmatch(piece):
        words.append(piece.encode("utf-8", errors="surrogateescape"))
      else:
        words.extend(self._split_text(piece))
    return words

  def word_lengths(self, data: bytes) -> list[int]:
    return [len(w) for w in self.split(data)]

  def finish_words(self, current_word: bytes, new_byte: int) -> list[bytes]:
    """For generation: split `current_word + new_byte` into words. All but the last are finished (usually
    none or one; several when an unfinished UTF-8 tail turns out to be invalid). The last word is the one
    still being written and always holds the new byte.

    A trailing incomplete UTF-8 character is never split off while it may still complete, matching what
    the splitter decides once the character is whole.
    """
    candidate = bytes(current_word) + bytes([new_byte])
    if incomplete_utf8_tail(candidate):
      return [candidate]
    return self.split(candidate)


def incomplete_utf8_tail(data: bytes) -> int:
  """Number of trailing bytes that form a valid but unfinished UTF-8 character (0..3)."""
  for back in range(1, min(4, len(data)) + 1):
    byte = data[-back]
    if (byte & 0xC0) == 0x80:  # continuation byte: keep looking for the lead byte
      continue
    need = 2 if 0xC2 <= byte <= 0xDF else 3 if 0xE0 <= byte <= 0xEF else 4 if 0xF0 <= byte <= 0xF4 else 0
    if need == 0 or back >= need:
      return 0
    try:  # the bytes so far must be a valid prefix (rules out e.g. overlong or surrogate encodings)
      data[-back:].decode("utf-8")
    except UnicodeDecodeError as err:
      return back if err.reason == "unexpected end of data" else 0
    return 0
  return 0
