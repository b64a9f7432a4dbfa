"""The echo guard tells the assistant's own voice from the user's, with real speech."""

from collections.abc import Callable

import numpy as np

from client.realtime import Float32
from server.session.echo import EchoReference, echo_likeness

Speak = Callable[..., Float32]


def test_reference_follows_the_clients_playback() -> None:
    ref = EchoReference()
    one = np.ones(16000, np.float32)
    ref.sent(one, 10.0)  # plays 10.0 .. 11.0
    ref.sent(2 * one, 10.1)  # queued behind it: 11.0 .. 12.0
    window = ref.window(10.5, 11.5)
    assert len(window) == 16000 and window[0] == 1 and window[-1] == 2
    assert ref.playing_between(11.9, 12.5) and not ref.playing_between(12.1, 13)
    ref.stop(10.6)  # barge-in: the client drops the rest of its queue
    assert not ref.playing_between(11.1, 11.5)
    assert ref.window(10.7, 10.8).max() == 1  # what was playing until the stop stays known


def test_echo_is_recognised_and_the_user_is_not(speak: Speak) -> None:
    answer = speak("Paris is the capital of France, and it is lovely in spring.")
    user = speak("Stop, what time is it?")
    rng = np.random.default_rng(1)
    played = 16000  # what the speaker played, from 1 s into the answer, 60 ms ago
    echo = 0.18 * answer[played:played + 4000]  # about -15 dB
    noise = rng.normal(0, 0.001, 4000).astype(np.float32)
    reference = answer[played - 8000:played + 4000 + 960]  # the guard's lag window
    assert echo_likeness(echo + noise, reference) > 0.9
    assert echo_likeness(user[4000:8000] + noise, reference) < 0.3
    # The user talking over the echo is the user: barge-in must still work.
    assert echo_likeness(user[4000:8000] + echo + noise, reference) < 0.5
    assert echo_likeness(np.zeros(4000, np.float32), reference) == 0.0
