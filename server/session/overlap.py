"""Speech over the assistant's answer: an interruption, or a backchannel that is not.

While an answer plays, speech from the user is a candidate interruption: nothing is sent
and nothing is cancelled yet. A short transcription of what overlaps decides. Words other
than backchannels ("mm-hm", "yeah", "I see") interrupt at once; speech that ends having
said only backchannels leaves the answer playing, and so does a short sound with no words
(a cough, a knock: shorter than the barge-in minimum); speech that goes on past
`LONGEST_MS` interrupts, whatever it says. Pure functions and state; the ears run the
transcriptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LONGEST_MS = 1200  # speech over the answer this long is an interruption, whatever its words
FIRST_LOOK_MS = 400  # the first short transcription, this far into the speech (less is
# too little for Whisper: 250 ms of "mm-hmm" came out as "in a")
LOOK_EVERY_MS = 250  # and again this often while it goes on

_NOISE = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪")  # [laughs], (coughing), *cough*
_REPEATS = re.compile(r"(.)\1+")

Phrase = tuple[str, ...]


def _token(word: str) -> str:
    """One spoken word, spelled the one way: "Mm-hmm" and "mhm", "Uh-huh" and "uh huh"."""
    return _REPEATS.sub(r"\1", word.replace("-", ""))


def tokens(text: str) -> list[str]:
    """``text``'s words, lower case and spelled one way, without the transcriber's notes on
    sounds that are not speech."""
    text = _NOISE.sub(" ", text.lower()).replace("-", "")
    return [_token(w) for w in re.findall(r"[a-z']+", text)]


def phrases(words: str) -> frozenset[Phrase]:
    """The backchannel setting (phrases separated by commas) as token tuples; "" is none."""
    return frozenset(tuple(tokens(p)) for p in words.split(",") if tokens(p))


def is_backchannel(text: str, known: frozenset[Phrase]) -> bool:
    """Whether ``text`` is only backchannels. "I see, okay" is; "I see a problem" is not;
    no words at all is too (the ears judge those by their length)."""
    words = tokens(text)
    longest = max((len(p) for p in known), default=0)
    covered = [True] + [False] * len(words)  # covered[i]: words[:i] are all backchannels
    for i in range(len(words)):
        if covered[i]:
            for n in range(1, min(longest, len(words) - i) + 1):
                if tuple(words[i:i + n]) in known:
                    covered[i + n] = True
    return covered[-1]


@dataclass
class Overlap:
    """The user's speech over an answer that is not yet an interruption."""

    item_id: str
    audio_start_ms: int  # includes the prefix padding
    onset_ms: int
    began: float  # when its first audio arrived (monotonic)
    next_look_ms: int = FIRST_LOOK_MS  # the speech's length at the next short transcription
