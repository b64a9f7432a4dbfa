"""The microphone client's audio and protocol core against the real server, no sound card:
the sound card is replaced at its boundary by a WAV reader (microphone) and a buffer
(speaker) that advance with the wall clock."""

from __future__ import annotations

import socket
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from client.audio_io import WavIO
from client.realtime import Float32, from_pcm16, pcm16, silence
from client.talk import TalkClient
from tests.conftest import words

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


def interrupted_wav(speak: Speak, path: Path) -> Path:
    # A question, a pause while the answer starts playing, then the user talks over it
    # while the server is still producing the long answer.
    return write_wav(path, silence(300, RATE),
                     speak("Tell me a long story about a brave dragon.", rate=RATE),
                     silence(1800, RATE),
                     speak("Stop. What time is it now?", rate=RATE))


async def test_full_duplex_barge_in_stops_playback_and_truncates(
        server_url: str, speak: Speak, tmp_path: Path) -> None:
    audio = WavIO(interrupted_wav(speak, tmp_path / "barge.wav"), RATE)
    lines: list[str] = []
    client = TalkClient(realtime_url(server_url), audio, duplex="full", out=lines.append,
                        instructions="Tell very long, detailed stories.")
    assert await client.run(max_turns=2, attempts=1, drain=False) == 0
    assert any(line.endswith("[cancelled]") for line in lines), "\n".join(lines)
    assert client.truncated and client.truncated[0][1] > 0  # told the server what was heard


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
