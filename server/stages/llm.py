"""The embedded language model: a GGUF through llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import Llama

from server.errors import BackendError, ConfigError
from server.runtime.config import Settings
from server.runtime.lanes import Lane, StreamControl
from server.stages import (
    ChatMessage,
    ChatRequest,
    Finished,
    LanguageModel,
    ResponderEvent,
    TextDelta,
    resolve,
)

_PER_MESSAGE = 8  # chat-template tokens around each message
BYTES_PER_TOKEN = 32  # more bytes than this per token of the window cannot fit: no tokenizing
CacheScope = Literal["shared", "session"]
PREEMPT_S = 1.0  # a reader away this long loses its context to a generation that waits
# A session whose own context (its prompt cached) is still being given back by its last
# generation waits this long for it before taking another, which would prefill it all again.
OWN_WAIT_S = 0.3
# Prompt tokens computed in one turn of the LLM lane, so that a long prompt never holds
# the other sessions' answers for the whole of its computing: 8 of them take about as long
# as two or three answer tokens, so turns stay near fair in time while others wait. Each
# turn has a cost of its own, though (150 prompt tokens took 1.25 s in chunks of 8, 1.12 s
# in chunks of 32 and 1.10 s at once, one thread, 2 cores), so with no one else waiting
# for the lane the chunks are bigger: a newcomer waits at most one of them.
PREFILL_CHUNK = 8
PREFILL_CHUNK_ALONE = 32


@dataclass
class Generation:
    """What one generation took and why it ended, filled in as it runs (in its lane)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, those the KV cache already held
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop", or "length" when max_tokens cut it short

    def finished(self) -> Finished:
        return Finished(self.finish_reason, self.prompt_tokens, self.completion_tokens,
                        self.cached_tokens)


class CountingLlama(Llama):
    """llama.cpp's model, counting each generation's tokens (its streamed chat chunks carry
    no usage) and keeping the last prompt its chat template made, as tokens, so that the
    prompt can be computed a chunk at a time before the completion starts.
    ``generation``, when set, receives the counts of the next completion."""

    generation: Generation | None = None
    prompt: list[int] | None = None

    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        self.prompt = list(prompt) if isinstance(prompt, list) else None
        return super().create_completion(prompt, *args, **kwargs)

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any
                 ) -> Generator[int, Sequence[int] | None, None]:
        report = self.generation
        if report is None:
            yield from super().generate(tokens, *args, **kwargs)
            return
        report.prompt_tokens = len(tokens)
        vocab = self._model.vocab
        for token in super().generate(tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(vocab, token):
                report.completion_tokens += 1
            yield token

    def prefill(self, tokens: Sequence[int], chunk: Callable[[], int]) -> Iterator[int]:
        """Compute the prompt but its last token (which the completion computes, for its
        logits) ``chunk()`` tokens at a time, after what the KV cache already holds; yields
        how many tokens were cached first, then once per chunk computed."""
        cached = 0
        for held, wanted in zip(self._input_ids, tokens, strict=False):
            if held != wanted:
                break
            cached += 1
        last = len(tokens) - 1
        cached = min(cached, max(last, 0))
        yield cached
        if cached < last:
            self.n_tokens = cached  # `eval` drops the rest of the KV cache
            while self.n_tokens < last:
                self.eval(tokens[self.n_tokens:min(self.n_tokens + chunk(), last)])
                yield cached


@dataclass(frozen=True)
class SavedState:
    """A conversation's KV cache, out of its context: its tokens and llama.cpp's copy of
    the sequence (about 23 KB a token with the default model)."""

    tokens: npt.NDArray[np.intc]
    data: ctypes.Array[ctypes.c_uint8]

    @property
    def size(self) -> int:
        return len(self.data)


class SavedStates:
    """The KV caches of sessions whose context another session took, kept (least recently
    saved dropped first, within ``budget`` bytes) so that their next turn computes only
    its new tokens: putting one back takes a few milliseconds, computing it again about
    a second for a 250-token conversation. Used from the LLM lane and the event loop."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._states: OrderedDict[str, SavedState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, session: str, state: SavedState) -> None:
        with self._lock:
            self._pop(session)
            if state.size > self.budget:
                return
            self._states[session] = state
            self._bytes += state.size
            while self._bytes > self.budget:
                self._pop(next(iter(self._states)))

    def take(self, session: str) -> SavedState | None:
        with self._lock:
            return self._pop(session)

    def _pop(self, session: str) -> SavedState | None:
        state = self._states.pop(session, None)
        if state is not None:
            self._bytes -= state.size
        return state

    @property
    def bytes(self) -> int:
        return self._bytes


class LlamaContext:
    """One llama.cpp context: a KV cache, its tokens and its sampler, which hold one
    conversation's state. Exactly one generation may be live on it at a time, or one
    session's answer would continue from another's prompt: a second one is refused.
    A session that takes the context from another saves the other's state first and
    puts its own back, when it was saved."""

    def __init__(self, path: Path, *, threads: int, context: int, scope: CacheScope,
                 saved: SavedStates | None = None) -> None:
        self.llm = CountingLlama(model_path=str(path), n_ctx=context, n_threads=threads,
                                 n_threads_batch=threads, verbose=False)
        self.scope = scope
        self.saved = saved
        self.owner = ""  # whose prompt the KV cache holds
        self.system = ""  # and the system prompt it starts with
        self._live = threading.Lock()  # held by the one live generation

    def _switch(self, session: str) -> None:
        """Hand the KV cache over to ``session``, in the lane: the owner's state is saved,
        and ``session``'s own put back; without it, a "session" scope starts empty."""
        llm = self.llm
        if self.saved is not None and self.owner and llm.n_tokens > 0:
            ctx = llm._ctx.ctx
            data = (ctypes.c_uint8 * llama_cpp.llama_state_seq_get_size(ctx, 0))()
            if llama_cpp.llama_state_seq_get_data(ctx, data, len(data), 0) == len(data):
                self.saved.put(self.owner, SavedState(
                    llm.input_ids[:llm.n_tokens].copy(), data))
        state = self.saved.take(session) if self.saved is not None else None
        if state is not None:
            llm._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
            if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, state.data, len(state.data),
                                                  0) == len(state.data):
                llm.input_ids[:len(state.tokens)] = state.tokens
                llm.n_tokens = len(state.tokens)
                llm._requires_eval = True  # no logits yet: the last token is computed again
                return
        if self.scope == "session" or state is not None:  # none of another's; a failed restore
            llm.reset()  # type: ignore[no-untyped-call]

    def generate(self, messages: Sequence[ChatMessage], *, temperature: float,
                 max_tokens: int, stop: threading.Event, session: str,
                 report: Generation | None = None,
                 contended: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Stream the answer's text; ``contended`` says whether other sessions wait for
        the lane this runs in (the prompt is then computed in smaller chunks)."""
        if not self._live.acquire(blocking=False):
            raise AssertionError("a second generation started on a llama.cpp context "
                                 "while another one was live")
        try:
            self._take(session, messages)
            self.llm.generation = report
            chunks: Iterator[dict[str, Any]] = self.llm.create_chat_completion(  # type: ignore[assignment]
                messages=_chat(messages),
                temperature=temperature, max_tokens=max_tokens, stream=True,
                repeat_penalty=1.1,
            )  # nothing computed yet: the template made the prompt, kept as tokens
            try:
                # A long prompt is computed a chunk per turn of the lane, so that other
                # sessions' answers go on meanwhile ("" is a turn with no text).
                progress = self.llm.prefill(
                    self.llm.prompt or [],
                    lambda: PREFILL_CHUNK if contended() else PREFILL_CHUNK_ALONE)
                cached = next(progress)
                if report is not None:
                    report.cached_tokens = cached
                for _ in progress:
                    if stop.is_set():
                        return
                    yield ""
                for chunk in chunks:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    delta = choice.get("delta", {}).get("content")
                    if delta:
                        yield delta
                    if report is not None and choice.get("finish_reason"):
                        report.finish_reason = choice["finish_reason"]
            finally:
                self.llm.generation = None
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                self._free_sampler()
        finally:
            self._live.release()

    def prepare(self, messages: Sequence[ChatMessage], longer: Sequence[ChatMessage], *,
                session: str, stop: Callable[[], bool]) -> int:
        """Compute ``messages``' prompt into the KV cache as far as its last message's
        words reach: not the template's end after them, nor their last token, which more
        words may spell otherwise (``longer`` is the same prompt with more words, to find
        where they begin to differ). An answer to the whole message, which starts with
        these words, then computes only the rest. Stops between chunks once ``stop()``;
        returns how many tokens it computed."""
        if not self._live.acquire(blocking=False):
            return 0  # a generation is live here: it has the cache
        try:
            self._take(session, messages)
            words, more = self._prompt(messages), self._prompt(longer)
            shared = next((i for i, (a, b) in enumerate(zip(words, more, strict=False))
                           if a != b), min(len(words), len(more)))
            progress = self.llm.prefill(words[:shared], lambda: PREFILL_CHUNK)
            cached = next(progress)
            computed = 0
            for _ in progress:  # one chunk computed each
                computed = self.llm.n_tokens - cached
                if stop():
                    break
            return computed
        finally:
            self._live.release()

    def _take(self, session: str, messages: Sequence[ChatMessage]) -> None:
        if session != self.owner:
            self._switch(session)  # and with a "session" scope, no prefix of another's
        self.owner = session
        self.system = messages[0].content if messages and messages[0].role == "system" else ""

    def _prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """``messages`` as the chat template makes them into a prompt, as tokens (nothing
        is computed: the completion is closed before it starts)."""
        chunks = self.llm.create_chat_completion(
            messages=_chat(messages),
            max_tokens=1, stream=True)
        prompt = self.llm.prompt or []
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        self._free_sampler()
        return prompt

    def _free_sampler(self) -> None:
        """Free the completion's sampler chain now. llama-cpp-python keeps the last one
        and drops it in a reference cycle when the next call makes its own, so each one's
        native memory waited for a full garbage collection: the server grew by about
        300 KiB an answer between those."""
        sampler = getattr(self.llm, "_sampler", None)
        if sampler is not None:
            self.llm._sampler = None
            sampler.close()


@dataclass(eq=False)
class Lease:
    """One generation's hold on a context, as the pool sees it."""

    speculative: bool  # a turn not yet confirmed: it waits behind its gate, by design
    system: str = ""  # the system prompt its prompt starts with
    control: StreamControl = field(default_factory=StreamControl)
    away_since: float | None = None  # its reader took an item and has not come back since
    closing: bool = False  # its reader is done: the context comes back once it is closed

    def idle_s(self, now: float) -> float:
        return 0.0 if self.away_since is None else now - self.away_since


class ContextPool:
    """Contexts lent to one generation at a time, on the event loop. A session gets the
    context that last held its prompt when it is free (its prefix is cached there), else
    one that holds no one's, else one that last started with the same system prompt. When
    all are lent, a generation whose reader has taken nothing for ``preempt_s`` (a client
    that stopped reading; never a speculative answer, which waits for its turn to be
    confirmed) is ended to make room; otherwise the caller waits its turn."""

    def __init__(self, contexts: Sequence[LlamaContext], preempt_s: float = PREEMPT_S) -> None:
        self._free: list[LlamaContext] = list(contexts)  # least recently used first
        self._lent: dict[LlamaContext, Lease] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.preempt_s = preempt_s
        self.preempted = 0

    async def acquire(self, session: str, lease: Lease) -> LlamaContext:
        loop = asyncio.get_running_loop()
        own_by = loop.time() + OWN_WAIT_S
        while True:
            if self._free:
                mine = self._pick(session, lease)
                if mine.owner == session or not self._returning(session) or (
                        loop.time() >= own_by):
                    break
                wait = own_by - loop.time()  # its own context is on its way back
            else:
                self._preempt_one()
                wait = self.preempt_s / 4
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, wait)
            except TimeoutError:
                continue  # look again for a reader that went away meanwhile
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # it was our turn: pass it on
                raise
        self._free.remove(mine)
        self._lent[mine] = lease
        return mine

    def lend_idle(self, session: str, lease: Lease) -> LlamaContext | None:
        """A context for work that may as well not be done: ``session``'s own or one that
        holds no one's history, if one is free and nobody waits for a context; else none."""
        if self.waiting:
            return None
        mine = next((c for c in self._free if c.owner == session), None)
        if mine is None and not self._returning(session):
            mine = next((c for c in self._free if not c.owner), None)
        if mine is not None:
            self._free.remove(mine)
            self._lent[mine] = lease
        return mine

    def _pick(self, session: str, lease: Lease) -> LlamaContext:
        """Its own history; else a context holding no one's (it costs one prefill of the
        system prompt, and keeps everyone else's history); else the one idle longest that
        starts with the same system prompt; else the one idle longest."""
        free = self._free  # least recently used first
        return (next((c for c in free if c.owner == session), None)
                or next((c for c in free if not c.owner), None)
                or next((c for c in free if c.system == lease.system), free[0]))

    def _returning(self, session: str) -> bool:
        return any(c.owner == session and lease.closing for c, lease in self._lent.items())

    def forget(self, session: str) -> None:
        """An ended session's contexts hold no one's history any more: a new session takes
        them before the context of a session still talking."""
        for context in (*self._free, *self._lent):
            if context.owner == session:
                context.owner = ""

    def release(self, context: LlamaContext) -> None:
        self._lent.pop(context, None)
        self._free.append(context)
        self._wake()

    def _preempt_one(self) -> None:
        if any(lease.control.halted for lease in self._lent.values()):
            return  # one is already on its way back (a busy lane may take a while)
        now = time.monotonic()
        stalled = [lease for lease in self._lent.values()
                   if not lease.speculative and not lease.control.halted
                   and lease.idle_s(now) >= self.preempt_s]
        if stalled:
            self.preempted += 1
            max(stalled, key=lambda lease: lease.idle_s(now)).control.halt()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> bool:
        """Whether a generation waits for a context (read from the lane's thread too)."""
        return any(not waiter.done() for waiter in tuple(self._waiters))


class LlamaModel:
    """The embedded model: a few llama.cpp contexts over one GGUF file (mapped once),
    each keeping its system prompt and history in its KV cache between turns (llama.cpp
    reuses the longest common prefix of consecutive prompts), with pinned threads: its
    batch threads default to all cores, which collapses under contention.

    Each generation has a context to itself (``ContextPool``), so generations of
    different sessions may take turns token by token in the lane and none ever decodes
    on another's state. With ``cache_scope="session"`` no prefix is reused across
    sessions, so one client cannot time another's prompt (see the README).
    """

    def __init__(self, path: Path, *, threads: int = 1, context: int = 2048,
                 cache_scope: CacheScope = "shared", contexts: int = 2,
                 saved_bytes: int = 256 * 2**20) -> None:
        if not path.is_file():
            raise ConfigError(f"no GGUF model at {path}")
        self.name = path.stem
        self.saved = SavedStates(saved_bytes)
        self.contexts = [LlamaContext(path, threads=threads, context=context, scope=cache_scope,
                                      saved=self.saved)
                         for _ in range(contexts)]
        self.llm = self.contexts[0].llm  # for tokenizing, and for callers with no pool
        self.context = context
        self.pool = ContextPool(self.contexts)
        self._counts: OrderedDict[str, int] = OrderedDict()  # text -> tokens, most recent last

    def forget(self, session: str) -> None:
        self.pool.forget(session)
        self.saved.take(session)

    def warm(self, system: str) -> None:
        """Put the default system prompt in every context's KV cache, so that no
        session's first turn computes it: a one-token answer to an empty question."""
        if self.contexts[0].scope == "session":
            return  # nothing is reused across sessions, this included
        for context in self.contexts:
            for _ in context.generate([ChatMessage("system", system), ChatMessage("user", "")],
                                      temperature=0.0, max_tokens=1, stop=threading.Event(),
                                      session=""):
                pass

    def count_tokens(self, text: str) -> int:
        cached = self._counts.get(text)
        if cached is not None:
            self._counts.move_to_end(text)
            return cached
        count = len(self.llm.tokenize(text.encode(), add_bos=False, special=True))
        self._counts[text] = count
        while len(self._counts) > _COUNT_CACHE:
            self._counts.popitem(last=False)
        return count

    def fit(self, messages: Sequence[ChatMessage], max_tokens: int) -> list[ChatMessage]:
        """Drop the oldest turns until the prompt and the answer fit in the context window.

        Token counts are cached per text, so a turn tokenizes only its new messages, and
        a prompt too long to fit by its size alone is cut or refused before tokenizing."""
        kept = list(messages)
        budget = self.context - max_tokens
        first = 1 if kept and kept[0].role == "system" else 0
        too_big = budget * BYTES_PER_TOKEN
        size = [len(m.content.encode()) for m in kept]
        while sum(size) > too_big and len(kept) > first + 1:
            del kept[first], size[first]
        if sum(size) > too_big:
            raise _too_long(f"the prompt is {sum(size)} bytes", self.context, budget)
        cost = [self.count_tokens(m.content) + _PER_MESSAGE for m in kept]
        total = sum(cost)
        while total > budget and len(kept) > first + 1:
            total -= cost[first]
            del kept[first], cost[first]
        if total > budget:
            raise _too_long(f"the prompt needs {total} tokens", self.context, budget)
        return kept

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        stop: threading.Event, session: str = "", context: LlamaContext | None = None,
        report: Generation | None = None, contended: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Fit the prompt, then generate on ``context`` (the first one by default);
        ``report``, when given, receives the generation's token counts and finish reason."""
        kept = self.fit(messages, max_tokens)
        yield from (context or self.contexts[0]).generate(
            kept, temperature=temperature, max_tokens=max_tokens, stop=stop, session=session,
            report=report, contended=contended)

    def prepare(self, messages: Sequence[ChatMessage], longer: Sequence[ChatMessage], *,
                max_tokens: int, session: str, context: LlamaContext,
                stop: Callable[[], bool]) -> int:
        """`LlamaContext.prepare` on the prompt `stream` would make of ``messages``."""
        return context.prepare(self.fit(messages, max_tokens), self.fit(longer, max_tokens),
                               session=session, stop=stop)


_COUNT_CACHE = 4096


def _too_long(what: str, context: int, budget: int) -> BackendError:
    return BackendError(f"{what}; the context window ({context}) leaves {budget} after the "
                        "answer's budget", code="llm_context_exceeded")


def _chat(messages: Sequence[ChatMessage]) -> list[Any]:
    """``messages`` as llama-cpp-python's chat completion takes them."""
    return [{"role": m.role, "content": m.content} for m in messages]


def as_text(message: ChatMessage) -> ChatMessage:
    """What a text-only model can read of a message: tool traffic written out as text."""
    parts = [message.content] if message.content else []
    if message.images:
        parts.append("(The user shared an image, which you cannot see.)")
    parts += [f"(I called the tool {c.name} with {c.arguments})" for c in message.tool_calls]
    if message.role == "tool":
        return ChatMessage("user", f"(The tool answered: {message.content})")
    return ChatMessage(message.role, " ".join(parts))


def deferrable(request: ChatRequest, pool: ContextPool) -> Callable[[], bool] | None:
    """When a generation may wait for other sessions' work in the lane: while it is a
    speculation, and while its listener is far ahead, unless another generation waits
    for a context (it then finishes, and gives its context back, sooner)."""
    tentative, ahead = request.background, request.ahead
    if ahead is None:
        return tentative
    return lambda: (tentative is not None and tentative()) or (ahead() and not pool.waiting)


class LocalResponder:
    """The embedded model as a Responder: llama.cpp runs in its own worker lane."""

    can_see = False
    can_use_tools = False

    def __init__(self, model: LlamaModel, lane: Lane) -> None:
        self.model, self.lane, self.name = model, lane, model.name

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        stop = threading.Event()
        messages = [as_text(m) for m in request.messages]
        pool = self.model.pool
        system = messages[0].content if messages and messages[0].role == "system" else ""
        lease = Lease(request.speculative, system)
        report = Generation()
        context = await pool.acquire(request.session, lease)
        returned = False

        def give_back() -> None:  # once the generator is closed, in the lane
            nonlocal returned
            if not returned:
                returned = True
                pool.release(context)

        # A token at a time, taking turns with other sessions' generations, each on its
        # own context. A reader that falls behind parks its generation (no work is done
        # for nobody); one that stays away while others wait for a context loses it.
        deltas = self.lane.stream(
            lambda: self.model.stream(messages, temperature=request.temperature,
                                      max_tokens=request.max_tokens, stop=stop,
                                      session=request.session, context=context,
                                      report=report, contended=self.lane.contended),
            stop, owner=request.session, step=True, on_closed=give_back,
            control=lease.control, background=deferrable(request, pool))
        try:
            async for delta in deltas:
                if not delta:
                    continue  # a chunk of the prompt computed
                lease.away_since = time.monotonic()
                yield TextDelta(delta)
                lease.away_since = None
            if lease.control.halted:
                raise BackendError("the answer was stopped: nothing read it while other "
                                   "sessions waited for the model", code="llm_preempted")
            yield report.finished()
        finally:
            lease.closing = True
            stop.set()
            await deltas.aclose()

    async def prepare(self, request: ChatRequest) -> int:
        """Compute the prompt of ``request``, whose last message is the user's words so
        far, into a context's KV cache (`LlamaContext.prepare`), when that costs nobody
        anything: on the session's own context or an unused one, as background work in
        the lane, stopping as soon as another session's work waits. Returns how many
        tokens it computed (0: none, or it was not the moment)."""
        said = request.messages[-1] if request.messages else None
        if said is None or said.role != "user":
            return 0
        messages = [as_text(m) for m in request.messages]
        longer = [*messages[:-1], as_text(replace(said, content=said.content + " and"))]
        pool = self.model.pool
        system = messages[0].content if messages[0].role == "system" else ""
        context = pool.lend_idle(request.session, Lease(True, system))
        if context is None:
            return 0
        loop = asyncio.get_running_loop()
        token = threading.Event()
        lock = threading.Lock()
        state = {"started": False, "abandoned": False}

        def work() -> int:  # in the lane; it gives the context back when it is done
            with lock:
                if state["abandoned"]:
                    return 0
                state["started"] = True
            try:
                return self.model.prepare(
                    messages, longer, max_tokens=request.max_tokens, session=request.session,
                    context=context,
                    stop=lambda: token.is_set() or self.lane.contended() or pool.waiting)
            finally:
                with contextlib.suppress(RuntimeError):  # unless the loop is gone
                    loop.call_soon_threadsafe(pool.release, context)

        try:
            return await self.lane.run(work, owner=request.session, token=token,
                                       background=lambda: True)
        except BaseException:
            with lock:  # a job that never started gives nothing back: the context is here
                never = not state["started"]
                state["abandoned"] = True
            if never:
                pool.release(context)
            raise


def load(settings: Settings, lane: Lane, model: LanguageModel | None) -> LocalResponder:
    """The embedded model in ``lane``: ``model`` when one is already loaded."""
    if model is None:
        model = LlamaModel(resolve(settings.llm_model, "llm"), threads=settings.llm_threads,
                           context=settings.llm_context, cache_scope=settings.llm_cache_scope,
                           contexts=settings.llm_contexts,
                           saved_bytes=settings.llm_saved_mib * 2**20)
        model.warm(settings.instructions)
    if not isinstance(model, LlamaModel):
        raise ConfigError("the local backend runs an embedded llama.cpp model")
    return LocalResponder(model, lane)
