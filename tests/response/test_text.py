import pytest

from server.errors import ConfigError
from server.response.text import SentenceSplitter
from server.runtime.config import Settings


def feed_all(text: str, step: int = 3, **kw: int) -> list[str]:
    s = SentenceSplitter(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.feed(text[i:i + step])
    return out + s.flush()


def test_first_piece_is_a_short_clause_then_whole_sentences() -> None:
    text = "Sure, I can help with that, Mr. Smith. The price is 3.50 dollars! Anything else?"
    assert feed_all(text) == ["Sure, I can help with that,", "Mr. Smith.",
                              "The price is 3.50 dollars!", "Anything else?"]


def test_short_clause_is_not_cut_too_early() -> None:
    assert feed_all("Yes, it is. Good.") == ["Yes, it is.", "Good."]


def test_sentence_is_emitted_as_soon_as_the_next_word_starts() -> None:
    s = SentenceSplitter()
    assert s.feed("Paris is the capital.") == []
    assert s.feed(" It") == ["Paris is the capital."]
    assert s.flush() == ["It"]


def test_runaway_text_without_punctuation_is_cut_at_a_space() -> None:
    pieces = feed_all("word " * 100, max_chars=50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == ["word"] * 100


def test_newlines_end_pieces_and_empty_input_gives_nothing() -> None:
    assert feed_all("One\nTwo") == ["One", "Two"]
    assert feed_all("   ") == []


def test_a_long_first_sentence_is_cut_before_a_conjunction_or_preposition() -> None:
    text = ("The sky looks blue because molecules in the air scatter the blue light of the sun "
            "more than the red light. Sunsets are red.")
    pieces = feed_all(text)
    assert pieces[0] == "The sky looks blue"  # before "because" (word 5), not mid-phrase
    assert " ".join(pieces) == text
    assert pieces[-1] == "Sunsets are red."  # later pieces are whole sentences


def test_a_first_sentence_with_no_natural_break_is_cut_after_the_word_limit() -> None:
    text = "Twelve eleven ten nine eight seven six five four three two one zero."
    pieces = feed_all(text, first_max_words=6)
    assert pieces == ["Twelve eleven ten nine eight seven", "six five four three two one zero."]


def test_a_short_first_sentence_is_not_cut() -> None:
    assert feed_all("It is sunny and warm today.") == ["It is sunny and warm today."]


def test_a_short_first_piece_breaks_before_an_article() -> None:
    text = "The moon is a celestial body that orbits the Earth. It has no air."
    pieces = feed_all(text, first_clause_words=2, first_max_words=4)
    assert pieces[0] == "The moon is"  # before "a" (word 4), not "The moon is a"
    assert pieces[1:] == ["a celestial body that orbits the Earth.", "It has no air."]
    # No break among the first words: cut at the limit.
    assert feed_all("A week is approximately seven days.", first_clause_words=2,
                    first_max_words=4) == ["A week is approximately", "seven days."]


@pytest.mark.parametrize("name", ["first_clause_words", "first_max_words"])
def test_first_piece_word_counts_must_be_positive(name: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting {name}=0"):
        Settings(**{name: 0})
