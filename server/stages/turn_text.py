"""Whether a turn reads finished, from its words: the embedded chat model (llama.cpp).

The transcript so far is put where a user's message goes in the model's chat template,
and the model's own probability that the message ends there (its end-of-message token
next) is the answer. It is the text-side half of semantic turn detection, beside the
audio-side turn model: an unfinished phrase ("I would like to", "send a message to Anna
saying", "and then") gets almost none (under 0.001 with SmolLM2-135M), a finished
question most of it (0.5-0.9). It is weak where a request stops without a question
("Set a timer for 10 minutes." 0.015), which is why it only holds a turn open for a
while (`Eagerness.unfinished_ms`) and never ends one on its own. It is as weak at a
phrase that stops on a word no sentence ends on ("I would like to." 0.018): those read
unfinished by rule (`trails_off`), before the model, at no cost.

A context of its own (the weights are mapped once per process, so about 10 MB more),
with the template's fixed start kept in its cache: a judgement computes only the words,
about 5 ms a token on one thread.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from llama_cpp import Llama

from server.errors import ConfigError
from server.stages import resolve

if TYPE_CHECKING:
    from server.runtime.config import Settings

# Words an English sentence does not end on: a turn whose transcript stops on one is
# unfinished whatever the model reads ("I would like to." 0.018, above "Set a timer for 10
# minutes." 0.015). Fillers and conjunctions always; articles, possessives and prepositions
# unless Whisper heard a question ("Where are you from?", "What is it for?").
NEVER_LAST = frozenset({"um", "uh", "er", "erm", "uhm", "hmm", "mm",
                        "and", "or", "but", "because", "if"})
NOT_LAST_BUT_ASKED = frozenset({"a", "an", "the", "my", "your", "our", "their",
                                "to", "for", "of", "at", "in", "on", "with", "from", "by",
                                "into", "about"})
CONTINUED = frozenset({("and", "then"), ("so", "then"), ("but", "then")})

CONTEXT = 256  # tokens: the template's start and the last words of a turn
MAX_WORDS = 60  # only the last words count: a long turn is judged on its end
# The template's start: a short system message, then the user's turn (ChatML).
SYSTEM = "You are a helpful voice assistant."


class LlamaTurnText:
    """The probability that ``text`` is a finished user turn (see the module)."""

    name = "smollm2"

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.llm = Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self._lock = threading.Lock()
        end = self.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        if len(end) != 1:
            raise ConfigError(f"{path.name}: no single <|im_end|> token (not a ChatML model)")
        self._end = end[0]
        self._start = self.llm.tokenize(
            f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n".encode(),
            add_bos=False, special=True)
        self.complete("Hello.")  # computes the template's start, and warms up

    def complete(self, text: str) -> float:
        words = " ".join(text.split()[-MAX_WORDS:])
        if not words or trails_off(words):
            return 0.0
        tokens = self._start + self.llm.tokenize(words.encode(), add_bos=False,
                                                 special=False)
        tokens = tokens[:CONTEXT - 1]
        with self._lock:
            llm = self.llm
            cached = 0
            for held, wanted in zip(llm.input_ids[:llm.n_tokens], tokens, strict=False):
                if held != wanted:
                    break
                cached += 1
            cached = min(cached, len(tokens) - 1)  # the last token is computed: its logits
            llm.n_tokens = cached  # `eval` drops the rest of the cache
            llm.eval(tokens[cached:])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(),  # type: ignore[no-untyped-call]
                                          shape=(llm.n_vocab(),))
            top = float(logits.max())
            weights = np.exp(logits.astype(np.float64) - top)
            return float(weights[self._end] / weights.sum())


def trails_off(text: str) -> bool:
    """Whether ``text`` stops on words that cannot end it (`NEVER_LAST`, `CONTINUED`, or
    `NOT_LAST_BUT_ASKED` without a question mark): the speaker has more to say."""
    words = re.findall(r"[a-z']+", text.lower())
    if not words:
        return False
    if words[-1] in NEVER_LAST or tuple(words[-2:]) in CONTINUED:
        return True
    return words[-1] in NOT_LAST_BUT_ASKED and not text.rstrip().endswith("?")


def load(settings: Settings) -> LlamaTurnText:
    from server.stages.registry import TURN_TEXT

    return LlamaTurnText(resolve(TURN_TEXT.get("smollm2").default, "llm"),
                         threads=settings.turn_threads)
