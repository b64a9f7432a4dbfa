"""Phonemes per synthesis run, bounded: what keeps a TTS engine's working memory in check.

onnxruntime keeps what a run needed for the next ones, so the longest run an engine is
ever given sets its memory for good. Cutting a long sentence into runs of at most a
fixed number of phonemes, and speaking one run of that size at load, keeps the memory
where the load left it.
"""

from __future__ import annotations

from collections.abc import Iterator

_CLAUSE_MARKS = frozenset(",;:")


def bounded(phonemes: list[str], limit: int) -> Iterator[list[str]]:
    """``phonemes`` in parts of at most ``limit``: cut after the last clause mark in the
    second half of the window, else at the last gap between words, else at the limit."""
    while len(phonemes) > limit:
        window = phonemes[:limit]
        marks = [i + 1 for i, p in enumerate(window) if p in _CLAUSE_MARKS and i >= limit // 2]
        gaps = [i for i, p in enumerate(window) if p == " " and i > 0]
        cut = marks[-1] if marks else gaps[-1] if gaps else limit
        yield phonemes[:cut]
        phonemes = phonemes[cut:]
        while phonemes and phonemes[0] == " ":
            phonemes = phonemes[1:]
    if phonemes:
        yield phonemes
