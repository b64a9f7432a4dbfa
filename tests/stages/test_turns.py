import numpy as np

from server.stages.turns import (
    InputBuffer,
    SpeechConfirmed,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
)


def detector(**kw: int) -> TurnDetector:
    args = {"window_ms": 32, "threshold": 0.5, "silence_ms": 320, "prefix_padding_ms": 96,
            "min_speech_ms": 96, "confirm_ms": 320}
    args.update(kw)
    return TurnDetector(**args)  # type: ignore[arg-type]


def test_speech_span_with_prefix_padding_and_hysteresis() -> None:
    d = detector()
    probs = [0.1] * 10 + [0.9] * 20 + [0.4] * 3 + [0.9] * 5 + [0.05] * 12
    events = d.feed(probs)
    assert events == [SpeechStarted(audio_start_ms=320 - 96, onset_ms=320),
                      SpeechConfirmed(at_ms=640), SpeechPaused(audio_end_ms=38 * 32),
                      SpeechStopped(audio_end_ms=38 * 32)]


def test_a_blip_shorter_than_min_speech_is_not_speech() -> None:
    d = detector()
    assert d.feed([0.9, 0.9, 0.1, 0.9, 0.1] + [0.1] * 20) == []


def test_short_pause_does_not_end_the_turn() -> None:
    d = detector()
    events = d.feed([0.9] * 10 + [0.1] * 9 + [0.9] * 10)  # 288 ms pause < 320 ms
    assert not any(isinstance(e, SpeechStopped) for e in events)
    # The pause is announced at its first window (speculation starts there) and withdrawn.
    assert [type(e) for e in events if isinstance(e, SpeechPaused | SpeechResumed)] == [
        SpeechPaused, SpeechResumed]
    assert d.in_speech


def test_input_buffer_slices_on_the_session_timeline() -> None:
    b = InputBuffer(max_seconds=1.0)
    b.append(np.arange(16000, dtype=np.float32))
    b.append(np.arange(16000, 32000, dtype=np.float32))
    assert b.base_ms == 1000 and b.total_ms == 2000  # bounded to one second
    piece = b.slice_ms(1500, 1510)
    assert piece[0] == 24000 and len(piece) == 160
    assert len(b.slice_ms(0, 1000)) == 0  # already dropped
    b.drop_before_ms(1900)
    assert b.held_ms == 100
    b.clear()
    assert b.held_ms == 0 and b.total_ms == 2000
