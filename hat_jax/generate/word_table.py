"""When does a new byte certainly continue (or certainly end) the current word? A table the device can read.

HAT generation asks the splitter, after every sampled byte x, how `current_word + x` splits
(`WordSplitter.finish_words`). Most answers are predictable from a few facts about the current word, so
`hat_jax.generate.hat_engine` keeps a small state per row (the class of its current word, below) and
looks the answer up on the device; only the remaining cases go back to the host, which asks the splitter.

For a state S and a byte x the table gives one outcome:

  CONT      finish_words(c, x) == [c + x] for every current word c of class S (an unfinished UTF-8
            character: the splitter is not asked at all, whatever the length);
  CONT_LEN  the same, provided len(c) + 1 <= max_word_bytes; otherwise the word is cut before x:
            finish_words(c, x) == [c, x] (every class with this outcome is pure ASCII, so the cut is
            exactly at max_word_bytes);
  SPLIT     finish_words(c, x) == [c, x]: c is finished and x starts the next word;
  HOST      anything else (a completed multi-byte character, an invalid continuation, a carriage
            return, ...): the host asks the splitter.

and the class of the new current word (`target` after CONT/CONT_LEN, `single[x]` after SPLIT or a cut).

Classes of the current word c for the "tfree" rule (R = ASCII letters and digits without a lowercase
letter directly followed by an uppercase one; P = ASCII punctuation; XS = ASCII symbols and controls
that are not whitespace; XW = tab, vertical tab, form feed):

  SP1 " "        SPN "  +"        NL "\\n"        WL " ?R" ending in [a-z]    WU " ?R" ending in [A-Z0-9]
  WP " ?(R|XS)?P+"      XS1 " ?XS"      XW1 XW      BYTE1 one byte that is never valid UTF-8
  U2 .. U4c     c ends with an unfinished but valid UTF-8 character (which lead byte, how far)
  OTHER         anything else (every non-lead byte goes to the host)

and for the "whitespace" rule: N (ASCII non-whitespace), NW (N then ASCII whitespace), S0 (ASCII
whitespace only), BYTE1, the UTF-8 states and OTHER.

Nothing here is derived from the splitter at run time: the rules are written out below and
tests/generate/test_word_table.py checks every (class, byte) pair against `hat-splitter` on random words of
each class, on random bytes and on real English and German text.

Special tokens (`WordSplitter(special_tokens=...)`): a token that could occur inside some `c + x` the
table decides has its bytes sent to the host (and words holding them are OTHER). A token such as
"<|eot_id|>" cannot occur in any of them (a symbol is followed by punctuation only, and then by at most
one byte), so it costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from hat_jax.data.splitter import WordSplitter, incomplete_utf8_tail

HOST, CONT, CONT_LEN, SPLIT = 0, 1, 2, 3
OUTCOMES = ("HOST", "CONT", "CONT_LEN", "SPLIT")

STATES = ("OTHER", "SP1", "SPN", "NL", "WL", "WU", "WP", "BYTE1", "XS1", "XW1",
          "U2", "U3E0", "U3", "U3ED", "U3b", "U4F0", "U4", "U4F4", "U4b", "U4c", "N", "NW", "S0")
S = {name: i for i, name in enumerate(STATES)}

_LO = set(range(ord("a"), ord("z") + 1))
_UP = set(range(ord("A"), ord("Z") + 1))
_DG = set(range(ord("0"), ord("9") + 1))
_P = set(b"!\"#%&'()*,-./:;?@[\\]_{}")  # ASCII \p{P}
_XW = set(b"\t\x0b\x0c")
_CR = {ord("\r")}
_XS = set(range(0x80)) - _LO - _UP - _DG - _P - _XW - _CR - {ord(" "), ord("\n")}  # symbols, other controls
_INVALID = set(range(0x80, 0xC2)) | set(range(0xF5, 0x100))  # never valid where a character starts
_PY_SPACE = {b for b in range(0x80) if chr(b).isspace()}  # the whitespace rule's ASCII \s

# Lead byte -> state after it; continuation state -> (allowed next byte range, state after it).
_LEADS = {**{b: "U2" for b in range(0xC2, 0xE0)}, 0xE0: "U3E0", 0xED: "U3ED",
          **{b: "U3" for b in [*range(0xE1, 0xED), 0xEE, 0xEF]}, 0xF0: "U4F0", 0xF4: "U4F4",
          **{b: "U4" for b in range(0xF1, 0xF4)}}
_CONTINUE = {"U3E0": (0xA0, 0xBF, "U3b"), "U3": (0x80, 0xBF, "U3b"), "U3ED": (0x80, 0x9F, "U3b"),
             "U4F0": (0x90, 0xBF, "U4b"), "U4": (0x80, 0xBF, "U4b"), "U4F4": (0x80, 0x8F, "U4b"),
             "U4b": (0x80, 0xBF, "U4c")}

_R = r"(?:[A-Z0-9]|[a-z](?![A-Z]))+"  # letters and digits, no camelCase boundary inside
_XS_CLASS = "[" + "".join(re.escape(chr(b)) for b in sorted(_XS)) + "]"
_P_CLASS = "[" + "".join(re.escape(chr(b)) for b in sorted(_P)) + "]"
_TFREE_PATTERNS = [  # (state, full-match pattern over the latin-1 decoding of c); first match wins
    ("SP1", r" "), ("SPN", r"  +"), ("NL", r"\n"), ("BYTE1", r"[\x80-\xc1\xf5-\xff]"),
    ("XS1", r" ?" + _XS_CLASS), ("XW1", r"[\t\x0b\x0c]"),
    ("WL", r" ?" + _R + r"(?<=[a-z])"), ("WU", r" ?" + _R + r"(?<=[A-Z0-9])"),
    ("WP", r" ?(?:" + _R + "|" + _XS_CLASS + ")?" + _P_CLASS + "+"),
]
_WS_CLASS = "[" + "".join(re.escape(chr(b)) for b in sorted(_PY_SPACE)) + "]"
_NWS_CLASS = "[^\x80-\xff" + "".join(re.escape(chr(b)) for b in sorted(_PY_SPACE)) + "]"
_WHITESPACE_PATTERNS = [("BYTE1", r"[\x80-\xc1\xf5-\xff]"), ("N", _NWS_CLASS + "+"),
                        ("NW", _NWS_CLASS + "+" + _WS_CLASS + "+"), ("S0", _WS_CLASS + "+")]


@dataclasses.dataclass(frozen=True)
class WordTable:
  """outcome / target: [num_states, 256] int32; single: [256] int32 (the class of the one-byte word x)."""

  rule: str
  max_word_bytes: int
  outcome: np.ndarray
  target: np.ndarray
  single: np.ndarray
  host_bytes: frozenset  # bytes the table never decides (special tokens, CR)

  def classify(self, word: bytes) -> int:
    """The state of a current word (host side: the prompt's last word, a word the host decided)."""
    word = bytes(word)
    tail = incomplete_utf8_tail(word) if word else 0
    if tail:
      lead = word[-tail]
      if tail == 1:
        return S[_LEADS[lead]]
      return S["U4c"] if tail == 3 else S["U3b"] if lead < 0xF0 else S["U4b"]
    if not word or len(word) > self.max_word_bytes or any(b in self.host_bytes for b in word):
      return S["OTHER"]
    text = word.decode("latin-1")
    for name, pattern in _patterns(self.rule):
      if pattern.fullmatch(text):
        return S[name]
    return S["OTHER"]

  def decide(self, state: int, word_len: int, byte: int) -> tuple[int, int]:
    """Host mirror of the device lookup: (outcome after the length rule, next state); HOST -> (HOST, state)."""
    out = int(self.outcome[state, byte])
    if out == HOST:
      return HOST, state
    if out == SPLIT or (out == CONT_LEN and word_len + 1 > self.max_word_bytes):
      return SPLIT, int(self.single[byte])
    return CONT, int(self.target[state, byte])


@functools.cache
def _patterns(rule: str):
  pats = _TFREE_PATTERNS if rule == "tfree" else _WHITESPACE_PATTERNS
  return tuple((name, re.compile(p, re.DOTALL)) for name, p in pats)


def _utf8_rows(outcome, target):
  """Lead bytes continue any word (finish_words never splits an unfinished character); a continuation
  that keeps the character valid and unfinished continues it."""
  for lead, state in _LEADS.items():
    outcome[:, lead], target[:, lead] = CONT, S[state]
  for state, (lo, hi, nxt) in _CONTINUE.items():
    outcome[S[state], lo:hi + 1], target[S[state], lo:hi + 1] = CONT, S[nxt]


def _tfree_rows(outcome, target, single):
  ascii_states = ("SP1", "SPN", "NL", "WL", "WU", "WP", "BYTE1", "XS1", "XW1")
  # byte class -> (its one-byte word's class, the classes it continues, the class after continuing)
  classes = [(_LO, "WL", ("SP1", "WL", "WU"), "WL"), (_UP, "WU", ("SP1", "WU"), "WU"),
             (_DG, "WU", ("SP1", "WL", "WU"), "WU"), ({ord(" ")}, "SP1", ("SP1", "SPN"), "SPN"),
             ({ord("\n")}, "NL", (), None), (_P, "WP", ("SP1", "WL", "WU", "WP", "XS1"), "WP"),
             (_XS, "XS1", ("SP1",), "XS1"), (_XW, "XW1", (), None), (_INVALID, "BYTE1", (), None)]
  for members, alone, continues, after in classes:
    for x in members:
      single[x] = S[alone]
      for state in ascii_states:
        if state in continues:
          outcome[S[state], x], target[S[state], x] = CONT_LEN, S[after]
        else:
          outcome[S[state], x], target[S[state], x] = SPLIT, S[alone]


def _whitespace_rows(outcome, target, single):
  ascii_states = ("N", "NW", "S0", "BYTE1")
  nws = set(range(0x80)) - _PY_SPACE
  classes = [(nws, "N", {"N": "N"}), (_PY_SPACE, "S0", {"N": "NW", "NW": "NW", "S0": "S0"}),
             (_INVALID, "BYTE1", {})]
  for members, alone, continues in classes:
    for x in members:
      single[x] = S[alone]
      for state in ascii_states:
        if state in continues:
          outcome[S[state], x], target[S[state], x] = CONT_LEN, S[continues[state]]
        else:
          outcome[S[state], x], target[S[state], x] = SPLIT, S[alone]


def _token_can_occur(token: bytes, rule: str) -> bool:
  """Whether a special token's text could lie inside some c + x the table decides (conservative)."""
  if rule != "tfree":
    return True
  for i, b in enumerate(token):  # after a symbol only punctuation follows in c, then at most one byte x
    if b in _XS:
      rest = token[i + 1:]
      j = 0
      while j < len(rest) and rest[j] in _P:
        j += 1
      if len(rest) - j > 1:
        return False
  return True


@functools.cache
def _build(rule: str, max_word_bytes: int, host_bytes: frozenset) -> WordTable:
  n = len(STATES)
  outcome = np.full((n, 256), HOST, np.int32)
  target = np.zeros((n, 256), np.int32)
  single = np.zeros(256, np.int32)
  if rule == "tfree":
    _tfree_rows(outcome, target, single)
  elif rule == "whitespace":
    _whitespace_rows(outcome, target, single)
  for b in host_bytes:
    outcome[:, b] = HOST
  _utf8_rows(outcome, target)  # after host_bytes: lead / continuation bytes never reach the splitter
  for arr in (outcome, target, single):
    arr.setflags(write=False)
  return WordTable(rule, max_word_bytes, outcome, target, single, host_bytes)


def word_table(splitter: WordSplitter) -> WordTable:
  """The table for a splitter's rule, max_word_bytes and special tokens."""
  host = set(_CR)
  for token in splitter.special_tokens:
    if _token_can_occur(token, splitter.rule):
      host |= set(token)
  return _build(splitter.rule, splitter.max_word_bytes, frozenset(host))
