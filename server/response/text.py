"""Sentence splitter: turns a stream of LLM text deltas into pieces ready for TTS.

The first piece may be a clause (cut at , ; : or a dash) once it has a few words,
because piper's time to first audio grows with the length of its text; a first sentence
with no such mark is cut at a word boundary after at most ``first_max_words`` words:
before the first conjunction or preposition past ``first_clause_words`` words where there
is one. Later pieces are whole
sentences. Pure and incremental: feed deltas, get finished pieces.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "a.m",
    "p.m", "approx", "no", "fig", "inc", "ltd", "co",
))
# The longest piece handed to TTS: a sentence longer than this is cut at a word boundary.
MAX_PIECE_CHARS = 300
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:]+(?=\s)|\s[-\u2013\u2014]\s")
_WORD = re.compile(r"\S+(?=\s)")  # a complete word: something follows it
# Words a phrase often starts with: a cut before one sounds like a natural breath.
_BREAKS = frozenset((
    "and", "but", "or", "so", "because", "which", "that", "who", "when", "where", "while",
    "if", "to", "with", "in", "on", "at", "for", "from", "of", "about", "by", "as", "than",
    "a", "an", "the",
))


class SentenceSplitter:
    def __init__(self, *, first_clause_words: int = 4, first_max_words: int = 8,
                 max_chars: int = MAX_PIECE_CHARS) -> None:
        self.first_clause_words = first_clause_words
        self.first_max_words = max(first_max_words, first_clause_words)
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while piece := self._next_piece():
            out.append(piece)
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _next_piece(self) -> str | None:
        cut = self._sentence_cut()
        if cut is None and self._emitted == 0:
            cut = self._clause_cut()
        if cut is None and self._emitted == 0:
            cut = self._word_cut()
        if cut is None and len(self._buf) > self.max_chars:
            cut = self._buf.rfind(" ", 0, self.max_chars)
            cut = cut if cut > 0 else self.max_chars
        if cut is None:
            return None
        piece, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
        if not piece:
            return None
        self._emitted += 1
        return piece

    def _sentence_cut(self) -> int | None:
        for m in _SENTENCE_END.finditer(self._buf):
            if m.group().startswith("\n") or not self._is_abbreviation(m.start()):
                return m.end()
        return None

    def _is_abbreviation(self, dot: int) -> bool:
        if self._buf[dot] != ".":
            return False
        word = self._buf[:dot].rsplit(None, 1)[-1].lower() if self._buf[:dot].strip() else ""
        return word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())

    def _clause_cut(self) -> int | None:
        for m in _CLAUSE_END.finditer(self._buf):
            if len(self._buf[: m.start()].split()) >= self.first_clause_words:
                return m.end()
        return None

    def _word_cut(self) -> int | None:
        words = list(_WORD.finditer(self._buf))
        if len(words) <= self.first_max_words:  # the next word decides whether to cut
            return None
        for m in words[self.first_clause_words:self.first_max_words + 1]:
            if m.group().lower().strip("\"'(") in _BREAKS:
                return m.start()
        return words[self.first_max_words - 1].end()
