"""Sessions never leak into or starve each other: one llama.cpp generation at a time,
fair and cancellable lanes, and audio intake bounded per append and per second."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from client.realtime import Float32, pcm16, silence
from server import audio as audio_codec
from server.edge.app import App
from server.errors import BackendError
from server.runtime.engines import Engines, resolve
from server.session.core import Session
from server.stages import ChatMessage, ChatRequest, Finished, TextDelta
from server.stages.llm import (
    OWN_WAIT_S,
    ContextPool,
    Generation,
    Lease,
    LlamaContext,
    LlamaModel,
    LocalResponder,
    SavedState,
    SavedStates,
    deferrable,
)
from tests.conftest import TEST_SETTINGS, padded
from tests.edge.test_limits import limited

PEOPLE = {
    "a": ("Bartholomew", "PINEAPPLE-7391"),
    "b": ("Cordelia", "WALRUS-2864"),
}
QUESTION = ("Write a long paragraph introducing yourself, with your name and your secret "
            "code, and describe your favourite places.")


RUNS = itertools.count()


def request(who: str) -> ChatRequest:
    """A's or B's question, as a new session each time: with `cache_scope="session"` every
    answer then starts from a cold cache, so greedy decoding gives the same words every
    time (a reused prefix changes llama.cpp's arithmetic, and so the words, a little)."""
    name, code = PEOPLE[who]
    system = (f"You are {name}. Your secret code is {code}. You always tell the user your "
              "name and your secret code when asked.")
    return ChatRequest((ChatMessage("system", system), ChatMessage("user", QUESTION)),
                       temperature=0.0, max_tokens=64, session=f"sess_{who}{next(RUNS)}")


async def answer(responder: LocalResponder, who: str, *, pause_after: int | None = None,
                 paused: asyncio.Event | None = None, resume: asyncio.Event | None = None,
                 delay_s: float = 0.0) -> str:
    """Read one whole answer; optionally stall after a few deltas (a gated speculative
    answer, a slow reader) until ``resume`` is set."""
    text = []
    async for event in responder.stream(request(who)):
        if isinstance(event, Finished):  # the last event: how it ended, and its tokens
            assert event.output_tokens and event.input_tokens
            continue
        assert isinstance(event, TextDelta)
        text.append(event.text)
        if pause_after is not None and len(text) == pause_after:
            assert paused is not None and resume is not None
            paused.set()
            await resume.wait()
        if delay_s:
            await asyncio.sleep(delay_s)
    return "".join(text)


def leaked(text: str, other: str) -> list[str]:
    name, code = PEOPLE[other]
    return [w for w in (name, code, code.split("-")[1]) if w.lower() in text.lower()]


@pytest.fixture
def cold(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> LlamaModel:
    assert isinstance(engines.llm, LlamaModel)
    for context in engines.llm.contexts:
        monkeypatch.setattr(context, "scope", "session")
    return engines.llm


async def test_two_sessions_secrets_never_cross_on_the_shared_model(
        engines: Engines, cold: LlamaModel) -> None:
    responder = LocalResponder(engines.llm, engines.llm_lane)
    solo = {who: await answer(responder, who) for who in PEOPLE}
    for who, other in (("a", "b"), ("b", "a")):
        assert len(solo[who].split()) >= 30, solo[who]  # long enough to be interleaved
        assert not leaked(solo[who], other)

    async def held_then_other(first: str, second: str) -> dict[str, str]:
        # A speculative answer held behind its gate: it stops reading after a few deltas
        # while the other session's answer runs, then goes on.
        paused, resume = asyncio.Event(), asyncio.Event()
        held = asyncio.create_task(answer(responder, first, pause_after=3, paused=paused,
                                          resume=resume))
        await paused.wait()
        await asyncio.sleep(0.3)
        other = await answer(responder, second)
        resume.set()
        return {first: await held, second: other}

    async def slow_and_fast() -> dict[str, str]:
        slow = asyncio.create_task(answer(responder, "a", delay_s=0.05))
        await asyncio.sleep(0.1)
        return {"b": await answer(responder, "b"), "a": await slow}

    async def both_at_once() -> dict[str, str]:
        a, b = await asyncio.gather(answer(responder, "a"), answer(responder, "b"))
        return {"a": a, "b": b}

    for run in (lambda: held_then_other("a", "b"), lambda: held_then_other("b", "a"),
                slow_and_fast, both_at_once):
        got = await run()
        for who, other in (("a", "b"), ("b", "a")):
            assert not leaked(got[who], other), (who, got[who])
            assert got[who] == solo[who]


async def test_an_abandoned_answer_leaves_the_model_clean(
        engines: Engines, cold: LlamaModel) -> None:
    responder = LocalResponder(engines.llm, engines.llm_lane)
    solo = await answer(responder, "b")
    stream = responder.stream(request("a"))
    await anext(stream)
    await stream.aclose()  # a barge-in: the reader leaves mid-answer
    assert await answer(responder, "b") == solo


async def test_a_reader_that_went_away_loses_its_context_to_one_that_waits(
        engines: Engines, cold: LlamaModel) -> None:
    """Clients that stopped reading park their answers; when every context is lent, the
    one whose reader has been away longest is ended for an answer that waits. A
    speculative answer waiting behind its gate never is."""
    responder = LocalResponder(cold, engines.llm_lane)
    pool = cold.pool
    solo = await answer(responder, "a")
    # Every earlier answer has given its context back (none left to the garbage collector).
    assert pool.free == len(cold.contexts)
    gone = [responder.stream(request("ab"[n % 2])) for n in range(len(cold.contexts))]
    for stream in gone:
        await anext(stream)  # and the client reads no more
    started = time.monotonic()
    assert await answer(responder, "a") == solo
    assert time.monotonic() - started >= pool.preempt_s * 0.9  # the reader had its grace
    outcomes = []
    for stream in gone:
        try:
            async for _ in stream:
                pass
            outcomes.append("completed")
        except BackendError as exc:
            outcomes.append(exc.code)
    assert sorted(outcomes) == ["completed"] * (len(gone) - 1) + ["llm_preempted"]

    held = [responder.stream(dataclasses.replace(request("ab"[n % 2]), speculative=True))
            for n in range(len(cold.contexts))]
    for stream in held:
        await anext(stream)  # behind their gates
    waiting = asyncio.create_task(answer(responder, "b"))
    await asyncio.sleep(pool.preempt_s * 2.5)
    assert not waiting.done()  # not taken from a turn about to be confirmed
    await held[0].aclose()  # the turn went on: the speculation is dropped
    assert len((await asyncio.wait_for(waiting, 60)).split()) >= 30
    for stream in held[1:]:
        await stream.aclose()


async def test_an_answer_far_ahead_of_its_listener_lets_another_answer_go_first(
        engines: Engines, cold: LlamaModel) -> None:
    """While its client holds seconds of it unplayed, an answer's next tokens wait for
    another session's answer (prompt and first words); otherwise the two take turns."""
    responder = LocalResponder(cold, engines.llm_lane)

    async def interleaving(ahead: bool) -> str:
        order: list[str] = []
        far = responder.stream(dataclasses.replace(request("a"), ahead=lambda: ahead))
        first = asyncio.Event()

        async def read_far() -> None:
            async for event in far:
                if isinstance(event, TextDelta):
                    order.append("a")
                    first.set()

        reading = asyncio.create_task(read_far())
        await first.wait()
        near = responder.stream(request("b"))
        async for event in near:
            if isinstance(event, TextDelta):
                order.append("b")
                if order.count("b") == 8:
                    break
        await near.aclose()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await far.aclose()
        return "".join(order)

    behind = await interleaving(ahead=False)
    assert behind[behind.index("b"):].count("a") >= 4, behind  # turn by turn
    far_ahead = await interleaving(ahead=True)
    assert far_ahead[far_ahead.index("b"):].count("a") <= 1, far_ahead
    for _ in range(100):  # and each gave its context back, in the lane
        if cold.pool.free == len(cold.contexts):
            break
        await asyncio.sleep(0.05)
    assert cold.pool.free == len(cold.contexts)


async def test_a_session_waits_briefly_for_its_own_context_while_it_is_given_back() -> None:
    """A session's next turn gets the context holding its prompt when its last answer is
    still handing it back, rather than a cold one that would prefill everything again."""
    def context(owner: str) -> LlamaContext:
        made = object.__new__(LlamaContext)
        made.owner, made.system = owner, "sys"
        return made

    own, spare = context("s"), context("t")
    for closing, back_after, want in ((True, 0.05, own), (True, None, spare),
                                      (False, 0.05, spare)):
        pool = ContextPool([own, spare])
        assert await pool.acquire("s", Lease(False, "sys")) is own
        pool._lent[own].closing = closing
        if back_after is not None:
            asyncio.get_running_loop().call_later(back_after, pool.release, own)
        started = time.monotonic()
        got = await pool.acquire("s", Lease(False, "sys"))
        waited = time.monotonic() - started
        assert got is want, (closing, back_after)
        if not closing:
            assert waited < 0.1  # its context is busy with a live answer: no waiting
        elif back_after is None:
            assert OWN_WAIT_S * 0.9 <= waited < OWN_WAIT_S + 0.5  # then it takes another


async def test_sessions_keep_their_own_contexts_while_there_are_enough() -> None:
    """A new session takes a context holding no one's conversation before it takes one
    holding another session's (whose next turn would compute its history all over
    again); only when none is left does it take the one idle longest, its system prompt
    first. A session that has ended holds no one's."""
    def context(owner: str, system: str) -> LlamaContext:
        made = object.__new__(LlamaContext)
        made.owner, made.system = owner, system
        return made

    mine, theirs, blank, other = (context("s1", "sys"), context("s2", "sys"),
                                  context("", "sys"), context("s3", "else"))
    pool = ContextPool([other, mine, theirs, blank])
    assert await pool.acquire("s1", Lease(False, "sys")) is mine
    assert await pool.acquire("new", Lease(False, "sys")) is blank
    assert await pool.acquire("newer", Lease(False, "sys")) is theirs  # its system prompt
    assert await pool.acquire("newest", Lease(False, "sys")) is other
    # A session that has ended leaves its context to the next new one.
    talking, ended = context("s1", "sys"), context("s2", "sys")
    pool = ContextPool([talking, ended])
    pool.forget("s2")
    assert await pool.acquire("next", Lease(False, "sys")) is ended


async def test_an_answer_ahead_of_its_listener_defers_only_while_nobody_waits_for_a_context(
        ) -> None:
    """An answer that is only ahead of its listener holds a context; while another
    generation waits for one, it does not let others go first, so that it ends and gives
    its context back sooner. A speculation waits whatever happens."""
    made = object.__new__(LlamaContext)
    made.owner, made.system = "", "sys"
    pool = ContextPool([made], preempt_s=60)
    ahead = dataclasses.replace(request("a"), ahead=lambda: True)
    speculation = dataclasses.replace(ahead, background=lambda: True)
    defer_ahead, defer_speculation = deferrable(ahead, pool), deferrable(speculation, pool)
    assert defer_ahead is not None and defer_speculation is not None
    assert deferrable(request("a"), pool) is None
    await pool.acquire("x", Lease(False, "sys"))
    assert defer_ahead() and not pool.waiting
    waiter = asyncio.create_task(pool.acquire("y", Lease(False, "sys")))
    await asyncio.sleep(0.01)
    assert pool.waiting and not defer_ahead() and defer_speculation()
    pool.release(made)
    await waiter
    assert not pool.waiting and defer_ahead()


def test_a_session_gets_its_conversation_back_after_another_took_its_context() -> None:
    """With one context for two sessions, each turn of one takes it from the other: the
    other's KV cache is saved and put back at its next turn, which then computes only its
    new words, and answers exactly what it answers computing everything. Without room to
    save it, the whole conversation is computed again."""
    system = TEST_SETTINGS.instructions
    for budget in (64 * 2**20, 0):
        model = LlamaModel(resolve(TEST_SETTINGS.llm_model, "llm"), contexts=1,
                           saved_bytes=budget)
        model.warm(system)
        context = model.contexts[0]

        def turn(session: str, said: list[ChatMessage], report: Generation,
                 context: LlamaContext = context) -> str:
            return "".join(context.generate(said, temperature=0.0, max_tokens=16,
                                            stop=threading.Event(), session=session,
                                            report=report))

        alice = [ChatMessage("system", system),
                 ChatMessage("user", "My name is Alice and I grow tomatoes. Say hello.")]
        alice.append(ChatMessage("assistant", turn("alice", alice, Generation())))
        before = model.count_tokens(" ".join(m.content for m in alice))
        turn("bob", [ChatMessage("system", system), ChatMessage("user", "Hi, I am Bob.")],
             Generation())
        alice.append(ChatMessage("user", "What do I grow?"))
        report = Generation()
        again = turn("alice", alice, report)
        if budget:
            assert model.saved.bytes > 0  # Bob's, saved when Alice took the context back
            assert report.cached_tokens >= before, (report, before)
            context.llm.reset()
            context.owner = ""
            assert turn("alice-cold", alice, Generation()) == again
        else:
            assert report.cached_tokens < before, (report, before)


def test_saved_states_keep_to_their_budget_oldest_out_first() -> None:
    def state(size: int) -> SavedState:
        return SavedState(np.zeros(1, dtype=np.intc), (ctypes.c_uint8 * size)())

    saved = SavedStates(budget=100)
    saved.put("a", state(40))
    saved.put("b", state(40))
    saved.put("c", state(40))  # over: a goes
    assert saved.take("a") is None and saved.bytes == 80
    saved.put("huge", state(101))  # never kept
    assert saved.take("huge") is None
    taken = saved.take("b")
    assert taken is not None and taken.size == 40 and saved.bytes == 40
    assert saved.take("b") is None


def test_every_context_starts_with_the_default_system_prompt() -> None:
    """The model is warmed with the default instructions in each context, so a session's
    first turn does not compute them."""
    model = LlamaModel(resolve(TEST_SETTINGS.llm_model, "llm"), contexts=2)
    system = TEST_SETTINGS.instructions
    model.warm(system)
    question = [ChatMessage("system", system), ChatMessage("user", "Hello there!")]
    for context in model.contexts:
        report = Generation()
        list(context.generate(question, temperature=0.0, max_tokens=2,
                              stop=threading.Event(), session="new", report=report))
        assert report.cached_tokens >= model.count_tokens(system), report


async def test_a_long_prompt_is_computed_in_turns_with_other_sessions_answers(
        engines: Engines, cold: LlamaModel) -> None:
    """A prompt of some 1,500 tokens is computed a chunk per turn of the lane: another
    session's short question, asked just after, gets its first words before the long one
    does, and both answers are what they would be alone."""
    responder = LocalResponder(cold, engines.llm_lane)
    long_text = " ".join(f"Item {n} is a blue box." for n in range(150))
    long = ChatRequest((ChatMessage("user", long_text + " How many items are there?"),),
                       temperature=0.0, max_tokens=8, session="sess_long")
    assert cold.count_tokens(long.messages[0].content) > 1000
    order: list[str] = []

    async def first_words(req: ChatRequest, name: str) -> str:
        text = []
        async for event in responder.stream(req):
            if isinstance(event, TextDelta):
                if not text:
                    order.append(name)
                text.append(event.text)
        return "".join(text)

    long_task = asyncio.create_task(first_words(long, "long"))
    await asyncio.sleep(0.05)  # its prompt is being computed
    short = dataclasses.replace(request("a"), max_tokens=8)
    short_answer = await first_words(short, "short")
    long_answer = await long_task
    assert order == ["short", "long"]
    assert long_answer and short_answer


async def test_one_llama_context_refuses_a_second_live_generation(engines: Engines) -> None:
    model = engines.llm
    assert isinstance(model, LlamaModel)
    stop = threading.Event()
    messages = list(request("a").messages)

    def two_at_once() -> str:
        first = model.stream(messages, temperature=0.0, max_tokens=8, stop=stop)
        second = model.stream(messages, temperature=0.0, max_tokens=8, stop=stop)
        try:
            next(first)
            with pytest.raises(AssertionError, match="second generation"):
                next(second)
        finally:
            first.close()
        return "".join(second_again := model.stream(
            messages, temperature=0.0, max_tokens=4, stop=stop)) or str(second_again)

    assert await engines.llm_lane.run(two_at_once)


async def test_the_prompt_fit_tokenizes_each_text_once_and_refuses_huge_ones_untokenized(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    model = engines.llm
    assert isinstance(model, LlamaModel)
    calls: list[int] = []
    tokenize = model.llm.tokenize

    def counting(text: bytes, *args: Any, **kwargs: Any) -> list[int]:
        calls.append(len(text))
        return tokenize(text, *args, **kwargs)

    monkeypatch.setattr(model.llm, "tokenize", counting)
    history = [ChatMessage("system", "Be brief.")] + [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} " * 40)
        for i in range(40)]

    def fits() -> tuple[list[ChatMessage], int, list[ChatMessage], int]:
        first = model.fit(history, 160)
        n = len(calls)
        second = model.fit([*history, ChatMessage("user", "and one more")], 160)
        return first, n, second, len(calls) - n

    first, n_first, _second, n_second = await engines.llm_lane.run(fits)
    assert first[0].role == "system" and len(first) < len(history)  # the oldest were dropped
    assert n_first <= len(history) and n_second == 1  # only the new message was tokenized
    calls.clear()
    huge = [ChatMessage("system", "x" * (model.context * 64)), ChatMessage("user", "hi")]
    with pytest.raises(BackendError, match="bytes"):
        await engines.llm_lane.run(lambda: model.fit(huge, 160))
    assert calls == []


# ---------------------------------------------------------------- through a real server


async def until(ws: ClientConnection, kind: str, within_s: float = 30.0) -> dict[str, Any]:
    async def wait() -> dict[str, Any]:
        async for message in ws:
            event: dict[str, Any] = json.loads(message)
            if event["type"] == kind:
                return event
        raise AssertionError(f"closed before {kind}")
    return await asyncio.wait_for(wait(), within_s)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def round_trip(ws: ClientConnection) -> float:
    """An audio chunk then a clear: the chunk goes through the VAD lane first."""
    started = time.monotonic()
    await ws.send(json.dumps({"type": "input_audio_buffer.append",
                              "audio": b64(pcm16(silence(20, 24000)))}))
    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    await until(ws, "input_audio_buffer.cleared")
    return time.monotonic() - started


def session_of(app: App, session_id: str) -> Session:
    return next(s for s in app.sessions if s.id == session_id)


def speech_with_pauses(speak: Callable[..., Float32], seconds: int) -> bytes:
    """G.711 speech with a short pause (300 ms, under the end-of-turn silence) every
    few seconds: each pause starts a speculative transcription of the turn so far."""
    sentence = speak("Tell me about the weather in the mountains this weekend", rate=8000)
    unit = np.concatenate([sentence, silence(300, 8000)])
    speech = np.tile(unit, int(seconds * 8000 / len(unit)) + 1)[:seconds * 8000]
    return audio_codec.encode(speech, "audio/pcmu")


async def next_turn_waits(url: str, speak: Callable[..., Float32],
                          appends: list[bytes]) -> tuple[float, list[str]]:
    """Session A sends ``appends`` and leaves; then B takes a short turn. How long B
    waited for its transcript, and the errors A was sent."""
    codes: list[str] = []
    async with connect(url, max_size=None) as a:
        await until(a, "session.created")
        await a.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {
                "format": {"type": "audio/pcmu"},
                # a slow speaker: the pauses are inside one long turn
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 2000}}}}}))
        await until(a, "session.updated")
        for chunk in appends:
            await a.send(json.dumps({"type": "input_audio_buffer.append",
                                     "audio": b64(chunk)}))
        await a.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "x"}))
        while (event := await until(a, "error", 60))["error"]["code"] != "item_not_found":
            codes.append(event["error"]["code"])  # all appends were taken in
        await asyncio.sleep(2)  # the pauses' transcriptions are queued or running
    async with connect(url) as b:
        await until(b, "session.created")
        await b.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"]}}))
        question = padded(speak("What time is it?", rate=24000), 24000, 300, 1200)
        for at in range(0, len(question), 24000):
            await b.send(json.dumps({"type": "input_audio_buffer.append",
                                     "audio": b64(pcm16(question[at:at + 24000]))}))
        sent = time.monotonic()
        done = await until(b, "conversation.item.input_audio_transcription.completed", 300)
        waited = time.monotonic() - sent
    assert "time" in done["transcript"].lower()
    return waited, codes


async def test_one_huge_append_is_refused_before_it_costs_anyone_anything(
        engines: Engines, speak: Callable[..., Float32]) -> None:
    """95 s of speech in one append: before, its pauses queued transcriptions of up to
    95 s each, and the next session's turn waited more than a minute."""
    async with limited(engines) as (url, _app):
        waited, codes = await next_turn_waits(url, speak, [speech_with_pauses(speak, 95)])
    assert codes == ["append_too_large"]
    assert waited < 10.0, f"the next session's turn waited {waited:.1f} s"


async def test_a_departed_sessions_speculations_do_not_hold_up_the_next_turn(
        engines: Engines, speak: Callable[..., Float32]) -> None:
    """Long turns sent as fast as allowed, then gone: each pause's speculative
    transcription is cancelled by the next pause, and what is queued by the close."""
    ulaw = speech_with_pauses(speak, 60)
    async with limited(engines, audio_burst_s=120.0, max_utterance_s=60.0) as (url, _app):
        waited, codes = await next_turn_waits(
            url, speak, [ulaw[at:at + 8000 * 15] for at in range(0, len(ulaw), 8000 * 15)])
    assert set(codes) <= {"turn_queue_full"}  # it talks faster than it can be answered
    assert waited < 10.0, f"the next session's turn waited {waited:.1f} s"


async def test_one_sessions_huge_append_is_refused_and_others_audio_flows(
        engines: Engines) -> None:
    noise = np.random.default_rng(1).uniform(-0.3, 0.3, 8000 * 500).astype(np.float32)
    huge = b64(audio_codec.encode(noise, "audio/pcmu"))  # 500 s, about 5 MB of base64
    big = b64(audio_codec.encode(noise[:8000 * 15], "audio/pcmu"))  # 15 s: allowed
    async with limited(engines, audio_burst_s=1000.0, max_message_bytes=8 * 1024 * 1024
                       ) as (url, _app), connect(url, max_size=None) as a, connect(url) as b:
        await until(a, "session.created")
        await until(b, "session.created")
        await a.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}}))
        await until(a, "session.updated")

        async def flood() -> list[str]:
            codes = []
            await a.send(json.dumps({"type": "input_audio_buffer.append", "audio": huge}))
            for _ in range(12):
                await a.send(json.dumps({"type": "input_audio_buffer.append",
                                         "audio": big}))
            await a.send(json.dumps({"type": "input_audio_buffer.clear"}))
            async for message in a:
                event = json.loads(message)
                if event["type"] == "error":
                    codes.append(event["error"]["code"])
                if event["type"] == "input_audio_buffer.cleared":
                    return codes
            return codes

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.05)
        trips = []
        while not flooding.done():
            trips.append(await round_trip(b))
            await asyncio.sleep(0.05)  # well under the event rate limit
        codes = await flooding
    assert codes and set(codes) <= {"append_too_large", "message_too_large"}, codes
    assert len(trips) >= 3
    # Before: a 20 ms chunk waited behind the whole long append in the VAD lane (~2 s).
    assert max(trips) < 1.0, trips


async def test_audio_faster_than_real_time_is_slowed_not_lost(engines: Engines) -> None:
    second = b64(pcm16(silence(1000, 24000)))
    async with limited(engines, max_append_s=1.0, audio_burst_s=1.0, audio_rate=2.0
                       ) as (url, app), connect(url) as ws:
        created = await until(ws, "session.created")
        session = session_of(app, created["session"]["id"])
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
        await until(ws, "session.updated")
        started = time.monotonic()
        for _ in range(5):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": second}))
        await ws.send(json.dumps({"type": "conversation.item.retrieve",
                                  "item_id": "none"}))
        error = await until(ws, "error")
        took = time.monotonic() - started
        held = session.buffer.held_ms
    assert error["error"]["code"] == "item_not_found"  # nothing else went wrong
    assert held >= 4950  # every second was kept (less the resampler's few ms in flight)
    assert took >= 1.8, took  # 1 s of burst, then 4 s of audio at twice real time


async def test_an_idle_stream_keeps_only_what_a_turn_could_reach_back_for(
        engines: Engines) -> None:
    chunk = b64(pcm16(silence(1000, 24000)))
    async with limited(engines, audio_burst_s=1000.0, max_bytes_per_s=1e9) as (url, app), \
            connect(url) as ws:
        created = await until(ws, "session.created")
        session = session_of(app, created["session"]["id"])
        for _ in range(150):  # two and a half minutes of nobody speaking
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": chunk}))
        assert await round_trip(ws) < 5
        total, held = session.buffer.total_ms, session.buffer.held_ms
    assert total >= 150_000
    # The prefix padding (300 ms), a turn's first speech and a margin; not 120 s.
    assert held <= 300 + TEST_SETTINGS.min_speech_ms + 1000 + 1000, held


async def test_instructions_have_one_length_limit_everywhere(engines: Engines) -> None:
    long = "Be brief. " * 4000  # 40,000 characters
    async with limited(engines) as (url, _app), connect(url) as ws:
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "response.create", "event_id": "r1", "response": {
            "instructions": long, "output_modalities": ["text"]}}))
        error = await until(ws, "error")
        await ws.send(json.dumps({"type": "session.update", "event_id": "s1", "session": {
            "type": "realtime", "instructions": long}}))
        error2 = await until(ws, "error")
        assert await round_trip(ws) < 5  # the session goes on
    assert error["error"]["code"] == "invalid_value"
    assert error["error"]["event_id"] == "r1" and "32768" in error["error"]["message"]
    assert error2["error"]["event_id"] == "s1"


async def test_turns_waiting_for_transcription_are_bounded_by_their_audio(
        engines: Engines) -> None:
    """Hand-committed turns queue their audio: at most --max-buffer-s of it waits."""
    noise = np.random.default_rng(2).uniform(-0.2, 0.2, 24000 * 40).astype(np.float32)
    forty = b64(pcm16(noise))
    async with limited(engines, max_buffer_s=60.0, max_append_s=60.0, audio_burst_s=1000.0,
                       max_bytes_per_s=1e9, max_event_bytes=8 * 1024 * 1024) as (url, _app), \
            connect(url, max_size=None) as ws:
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
        await until(ws, "session.updated")
        for n in range(3):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": forty}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit",
                                      "event_id": f"c{n}"}))
        error = await until(ws, "error", 120)
    assert error["error"]["code"] == "turn_queue_full"
    assert error["error"]["event_id"] == "c2" and "60 s" in error["error"]["message"]
