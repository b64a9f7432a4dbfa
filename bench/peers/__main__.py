"""`python -m bench.peers` (`make bench-peers`): Voxwire and Pipecat side by side, one run.

Both pipelines run the same embedded models (silero VAD, Whisper tiny.en int8 on the CPU,
SmolLM2 through llama.cpp, piper joe) on the same machine, one after the other, and are
measured by the same client (`bench.latency.one_turn`, the official `openai` SDK's realtime
client), on the same spoken questions, with the same clock: voice-to-voice runs from the end
of the user's speech in the audio sent to the first synthesized audio received.

Voxwire runs with its default settings. Pipecat (bench/peers/pipecat_server.py, installed
by `make bench-peers` in .venv-peers) runs with its own defaults, Smart Turn v3 included;
its LLM is llama.cpp's OpenAI-compatible server on the same GGUF with Voxwire's threads and
context, and it gets Voxwire's system prompt, temperature 0 and answer length.
Each system reports its own stage breakdown; JSON goes to bench/results/peers.json and the
side-by-side table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.evaluate import wer
from bench.latency import (
    ANSWERED,
    QUESTIONS,
    Fixture,
    machine,
    make_fixtures,
    one_turn,
    pct,
    server_process,
)
from bench.report import splice_peers
from models import locate
from server.runtime.config import Settings

PEERS_PYTHON = Path(__file__).resolve().parents[2] / ".venv-peers/bin/python"
SERVER = Path(__file__).with_name("pipecat_server.py")
PEER_PACKAGES = ("pipecat-ai", "faster-whisper", "ctranslate2", "piper-tts", "onnxruntime")
TURN_TIMEOUT_S = 90.0
LATE_TURN_END_MS = 2000.0  # a turn declared over this long after the speech ended
# Each system's own stages, mapped onto one timeline. Pipecat's add up to its voice to voice;
# Voxwire's overlap the end of turn when it transcribes and answers during that wait.
STAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "end of turn": {"voxwire": ("endpoint",),
                    "pipecat": ("endpointing_wait", "turn_detection")},
    "transcription": {"voxwire": ("asr",), "pipecat": ("transcription",)},
    "LLM first token": {"voxwire": ("llm_first_token",), "pipecat": ("llm_inference",)},
    "first sentence": {"voxwire": ("first_sentence",), "pipecat": ("sentence_aggregation",)},
    "synthesis to first audio": {"voxwire": ("tts_first_audio",),
                                 "pipecat": ("speech_synthesis",)},
    "release and sending": {"voxwire": ("held", "send"),
                            "pipecat": ("output_transport", "pipeline")},
    "voice to voice, server's clock": {"voxwire": ("voice_to_voice",),
                                       "pipecat": ("voice_to_voice",)},
}


def fixtures_for(turns: int, voices: list[str]) -> list[tuple[str, Fixture]]:
    """All questions in each voice, in turn, until there are `turns` of them."""
    pool = [(voice, fx) for voice in voices for fx in make_fixtures(QUESTIONS, voice)]
    return [pool[i % len(pool)] for i in range(turns)]


def run(url: str, spoken: list[tuple[str, Fixture]], metrics_event: str) -> list[dict[str, Any]]:
    turns = asyncio.run(measure(url, [fx for _, fx in spoken], metrics_event))
    return [{**turn, "voice": voice} for (voice, _), turn in zip(spoken, turns, strict=True)]


async def measure(url: str, fixtures: list[Fixture], metrics_event: str) -> list[dict[str, Any]]:
    """One fresh session per question, after one warm-up turn; a stuck turn is recorded."""
    out = []
    for n, fx in enumerate([fixtures[0], *fixtures]):
        try:
            turn = await asyncio.wait_for(one_turn(url, fx, metrics_event), TURN_TIMEOUT_S)
        except Exception as exc:  # a failed turn is a result, not the end of the run
            turn = {"question": fx.text, "transcript": "", "status": f"failed: {exc!r}",
                    "client_v2v_ms": None, "stages_ms": {}, "endpoint_ms": None}
        if n:
            out.append(turn)
            print(f"  {turn['client_v2v_ms']} ms  {turn['status']}  {turn['transcript']!r}",
                  flush=True)
    return out


def summarize(system: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [t["client_v2v_ms"] for t in turns if t["client_v2v_ms"] is not None]
    endpoint = [t["endpoint_ms"] for t in turns if t.get("endpoint_ms") is not None]
    stages = {}
    for name, keys in STAGES.items():
        vals = [sum(t["stages_ms"].get(k, 0.0) for k in keys[system]) for t in turns
                if t["stages_ms"]]
        stages[name] = {"p50": pct(vals, 50), "p95": pct(vals, 95)}
    # answered in full; `incomplete` is an answer its token cap ended, as in `bench.latency`
    return {"turns": len(turns), "completed": sum(t["status"] in ANSWERED for t in turns),
            "v2v_ms": {"p50": pct(v2v, 50), "p95": pct(v2v, 95), "min": min(v2v, default=0),
                       "max": max(v2v, default=0)},
            "turn_end_ms": {"p50": pct(endpoint, 50), "p95": pct(endpoint, 95)},
            "late_turn_ends": sum(e > LATE_TURN_END_MS for e in endpoint),
            "wer": wer([(t["question"], t["transcript"]) for t in turns]),
            "stages_ms": stages, "raw": turns}


def wait_port(port: int, procs: list[subprocess.Popen[bytes]], log: Path,
              seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a peer process exited; its log ({log}):\n"
                               + log.read_text()[-3000:])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise RuntimeError(f"nothing listened on port {port} within {seconds:.0f} s")


@contextlib.contextmanager
def pipecat(port: int, llm_port: int, asr_model: str, logs: Path) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server (this venv), then the Pipecat server (its own)."""
    if not PEERS_PYTHON.is_file():
        raise SystemExit(f"{PEERS_PYTHON} is missing: run `make bench-peers`")
    s = Settings()
    llama = [sys.executable, "-m", "llama_cpp.server", "--model",
             str(locate(s.llm_model, "llm")), "--model_alias", s.llm_model,
             "--n_threads", str(s.llm_threads), "--n_threads_batch", str(s.llm_threads),
             "--n_ctx", str(s.llm_context), "--host", "127.0.0.1", "--port", str(llm_port)]
    peer = [str(PEERS_PYTHON), str(SERVER), "--port", str(port),
            "--llm-url", f"http://127.0.0.1:{llm_port}/v1", "--llm-model", s.llm_model,
            "--asr-model", str(locate(asr_model, "asr")),
            "--voice", str(locate(s.tts_voice, "tts")),
            "--instructions", s.instructions, "--temperature", "0",
            "--max-tokens", str(s.max_output_tokens)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd, name, ready in ((llama, "llama", llm_port), (peer, "pipecat", port)):
            log = logs / f"{name}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
            wait_port(ready, procs, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def peer_versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    out = subprocess.run([str(PEERS_PYTHON), "-c", code, *PEER_PACKAGES], check=True,
                         capture_output=True, text=True).stdout
    versions: dict[str, str] = json.loads(out)
    return versions


def render(res: dict[str, Any]) -> str:
    vox, pc = res["systems"]["voxwire"], res["systems"]["pipecat"]
    lines = [f"{'':40} {'Voxwire':>10} {'Pipecat':>10}",
             f"{'turns completed':40} {vox['completed']:>7}/{vox['turns']:<2} "
             f"{pc['completed']:>7}/{pc['turns']:<2}",
             f"{'turns ended > 2 s after the speech':40} {vox['late_turn_ends']:10} "
             f"{pc['late_turn_ends']:10}"]
    for label, key in (("voice to voice p50 ms", "p50"), ("voice to voice p95 ms", "p95")):
        lines.append(f"{label:40} {vox['v2v_ms'][key]:10.0f} {pc['v2v_ms'][key]:10.0f}")
    for stage in STAGES:
        lines.append(f"{stage + ' p50 ms':40} {vox['stages_ms'][stage]['p50']:10.0f} "
                     f"{pc['stages_ms'][stage]['p50']:10.0f}")
    lines.append(f"{'transcript WER':40} {vox['wer']:10.3f} {pc['wer']:10.3f}")
    lines.append(f"Pipecat's p50 / Voxwire's: {res['p50_ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=24, help="measured turns per system")
    ap.add_argument("--voices", default="piper,espeak", help="voices speaking the questions")
    ap.add_argument("--asr", default="tiny.en", help="the Whisper model both systems use")
    ap.add_argument("--port", type=int, default=8795, help="Voxwire; Pipecat and llama.cpp "
                                                           "take the next two")
    ap.add_argument("--results", type=Path, default=Path("bench/results"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    spoken = fixtures_for(args.turns, args.voices.split(","))
    res: dict[str, Any] = {"machine": machine(), "peer_versions": peer_versions(), "settings": {
        "asr_model": args.asr, "turns": len(spoken), "voices": args.voices,
        "pacing": "real time, 40 ms chunks, one fresh session per question, one warm-up turn",
        "voxwire": "default settings", "pipecat": "its defaults (VAD stop 0.2 s, Smart Turn "
        "v3, Whisper beam 5); llama.cpp server with Voxwire's LLM threads and context"},
        "stage_keys": STAGES, "systems": {}}
    print(f"Voxwire, {len(spoken)} turns", flush=True)
    with server_process(args.port, ["--asr-model", args.asr, "--log-level", "WARNING"]) as (
            url, _):
        vox = run(url, spoken, "voxwire.turn.metrics")
    res["systems"]["voxwire"] = summarize("voxwire", vox)
    print(f"Pipecat, {len(spoken)} turns", flush=True)
    with tempfile.TemporaryDirectory() as logs, pipecat(
            args.port + 1, args.port + 2, args.asr, Path(logs)) as url:
        pc = run(url, spoken, "pipecat.turn.metrics")
    res["systems"]["pipecat"] = summarize("pipecat", pc)
    res["p50_ratio"] = (res["systems"]["pipecat"]["v2v_ms"]["p50"]
                        / res["systems"]["voxwire"]["v2v_ms"]["p50"])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "peers.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    print(f"\n# Voxwire beside Pipecat: {m['cpu']}, {m['cores']} cores\n{render(res)}")
    print(f"spliced the Pipecat section into {splice_peers(args.results, args.docs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
