"""The microphone client's audio and protocol core against the real server, no sound card:
the sound card is replaced at its boundary by a WAV reader (microphone) and a buffer
(speaker) that advance with the wall clock."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.echo import Room, RoomIO
from client.audio_io import WavIO
from client.realtime import Float32, from_pcm16, pcm16, silence
from client.talk import TalkClient
from server.edge.app import App
from server.runtime.engines import Engines
from server.runtime.store import SqlStore
from tests.conftest import TEST_SETTINGS, words

Speak = Callable[..., Float32]
RATE = 24000


def write_wav(path: Path, *parts: Float32) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm16(np.concatenate(parts)))
    return path


def realtime_url(server_url: str, path: str = "/v1/realtime") -> str:
    return server_url.replace("http://", "ws://") + path


async def test_talk_holds_a_turn_from_a_terminal(server_url: str, speak: Speak,
                                                 tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "q.wav", silence(500, RATE),
                    speak("What is the capital of France?", rate=RATE))
    audio = WavIO(wav, RATE)
    lines: list[str] = []
    client = TalkClient(realtime_url(server_url), audio, out=lines.append)
    assert await client.run(max_turns=1, attempts=1) == 0
    you = next(line for line in lines if line.startswith("you: "))
    assert words(you[5:]) == words("What is the capital of France?")
    answer = next(line for line in lines if line.startswith("assistant: "))
    assert len(answer) > len("assistant: ") and "[" not in answer
    assert any(line.startswith("latency: voice-to-voice ") for line in lines)
    heard = from_pcm16(bytes(audio.heard))
    assert np.abs(heard).max() > 0.05  # the answer reached the speaker


async def talk(client: TalkClient, turns: int, lines: list[str]) -> int:
    """``client.run`` for ``turns`` answers, bounded: a turn never heard fails the test with
    the conversation so far, not a bare timeout."""
    try:
        return await asyncio.wait_for(client.run(max_turns=turns, attempts=1, drain=False), 120)
    except TimeoutError:
        pytest.fail("no end after 120 s:\n" + "\n".join(lines))


def interrupted_wav(speak: Speak, path: Path) -> Path:
    # A question, a pause while the answer starts playing, then the user talks over it
    # while the server is still producing the long answer.
    return write_wav(path, silence(300, RATE),
                     speak("Tell me a long story about a brave dragon.", rate=RATE),
                     silence(1800, RATE),
                     speak("Stop. What time is it now?", rate=RATE))


async def test_full_duplex_barge_in_stops_playback_and_truncates(
        story_server_url: str, speak: Speak, tmp_path: Path) -> None:
    audio = WavIO(interrupted_wav(speak, tmp_path / "barge.wav"), RATE)
    lines: list[str] = []
    client = TalkClient(realtime_url(story_server_url), audio, duplex="full", out=lines.append,
                        instructions="Tell very long, detailed stories.")
    assert await talk(client, 2, lines) == 0
    assert any(line.endswith("[cancelled]") for line in lines), "\n".join(lines)
    assert client.truncated and client.truncated[0][1] > 0  # told the server what was heard


async def test_full_duplex_through_speakers_hears_the_user_not_itself(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    """The speaker's output comes back into the microphone through a room (100 ms, three
    reflections, -6 dB); the server cancels it, and only the user's interruption is a turn.
    The echo guard is off: the canceller alone keeps the assistant from hearing itself."""
    wav = write_wav(tmp_path / "room.wav", silence(300, RATE),
                    speak("Tell me a long story about a brave dragon.", rate=RATE),
                    silence(4000, RATE), speak("Stop. What time is it now?", rate=RATE))
    audio = RoomIO(wav, Room(100), RATE)
    lines: list[str] = []
    app = App(dataclasses.replace(TEST_SETTINGS, echo_guard=0.0), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        client = TalkClient(f"ws://{host}:{port}/v1/realtime", audio, duplex="full",
                            out=lines.append, instructions="Tell very long, detailed stories.")
        assert client.cancels_echo
        assert await talk(client, 2, lines) == 0
    heard = [words(line[5:]) for line in lines if line.startswith("you: ")]
    assert len(heard) == 2, lines  # the question and the interruption: no echo turns
    assert {"time", "now"} <= set(heard[1]), lines
    # The answer played on through the echo until the user spoke (4 s after the question),
    # then stopped there. (On a quiet machine the server has sent the whole answer by then,
    # so there may be no response left to cancel: the playback is what stops.)
    assert client.truncated and client.truncated[0][1] > 2000, client.truncated
    echo = np.concatenate(audio.captured)[RATE * 3:RATE * 6]
    assert np.abs(echo).max() > 0.05  # and its echo did reach the microphone


async def test_half_duplex_does_not_let_the_answer_interrupt_itself(
        server_url: str, speak: Speak, tmp_path: Path) -> None:
    audio = WavIO(interrupted_wav(speak, tmp_path / "echo.wav"), RATE)
    lines: list[str] = []
    client = TalkClient(realtime_url(server_url), audio, duplex="half", out=lines.append,
                        instructions="Tell very long, detailed stories.")
    assert await client.run(max_turns=1, attempts=1, drain=False) == 0
    # The talking-over happened while the answer played: the microphone was closed.
    assert not any(line.endswith("[cancelled]") for line in lines), lines
    assert client.truncated == []


async def test_clear_messages_for_refused_and_wrong_urls(server_url: str, speak: Speak,
                                                         tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "s.wav", silence(200, RATE))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cases = [
        (f"ws://127.0.0.1:{closed_port}/v1/realtime", 1, "is `voxwire serve` running"),
        (realtime_url(server_url, "/v2/nothing"), 2, "HTTP 404"),
        (server_url, 2, "not a WebSocket URL"),
    ]
    for url, code, message in cases:
        lines: list[str] = []
        client = TalkClient(url, WavIO(wav, RATE), out=lines.append)
        assert await client.run(attempts=2) == code, lines
        assert any(message in line for line in lines), lines


async def test_talk_goes_on_with_its_conversation_after_a_lost_connection(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    settings = dataclasses.replace(TEST_SETTINGS, store=f"sqlite:///{tmp_path}/h.db")
    wav = write_wav(tmp_path / "q.wav", silence(500, RATE),
                    speak("My name is Alice.", rate=RATE), silence(500, RATE))
    lines: list[str] = []
    app = App(settings, engines=engines)
    async with app.start_server() as server:
        url = "ws://{}:{}/v1/realtime".format(*server.sockets[0].getsockname()[:2])
        client = TalkClient(url, WavIO(wav, RATE), out=lines.append)
        assert await talk(client, 1, lines) == 0
        first = client.session_id
        # The connection was lost (here: the first run ended); the next one resumes.
        client.audio = WavIO(write_wav(tmp_path / "quiet.wav", silence(300, RATE)), RATE)
        assert await client.run(max_turns=0, attempts=1, drain=False) == 0
        assert isinstance(app.store, SqlStore)
        stored = [(s["id"], s["turns"]) for s in app.store.sessions()]
    assert first is not None and client.session_id == first
    assert stored == [(first, 1)]  # one conversation, not two
    assert "the conversation goes on where it was" in lines
    # A server that keeps no history cannot resume it: a new conversation starts.
    lines.clear()
    async with App(TEST_SETTINGS, engines=engines).start_server() as server:
        client.url = "ws://{}:{}/v1/realtime".format(*server.sockets[0].getsockname()[:2])
        assert await client.run(max_turns=0, attempts=2, drain=False) == 0
    assert any(line.startswith("the conversation could not go on (HTTP 400)") for line in lines)
    assert client.session_id not in (None, first)

