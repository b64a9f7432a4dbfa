"""docs/benchmarks.md from the JSON results, with the plots beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.plots import sessions_plot, stage_bars
from bench.soak import section as soak_section

STAGES = ["endpoint", "asr", "llm_first_token", "first_sentence", "tts_first_audio", "held",
          "send", "voice_to_voice", "client_voice_to_voice"]


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def latency_section(lat: dict[str, Any]) -> list[str]:
    m = lat["machine"]
    # The stage table holds the WebSocket runs; the WebRTC ones are beside them below.
    names = [n for n, r in lat["runs"].items()
             if r.get("transport", "websocket") == "websocket"] or list(lat["runs"])
    lines = ["## Voice-to-voice latency, stage by stage", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
             f"Settings: {lat['settings']}.", "",
             "![stage latencies](img/stages.png)", "",
             "| stage | " + " | ".join(f"{n} p50 | p95 | alone" for n in names) + " |",
             "|---|" + "---|---|---|" * len(names)]
    for stage in STAGES:
        cells = []
        for n in names:
            if stage not in lat["runs"][n]["stages_ms"]:
                cells.append(" | | ")
                continue
            v = lat["runs"][n]["stages_ms"][stage]
            alone = lat["runs"][n]["direct_compute_ms"].get(stage)
            cells.append(f"{v['p50']:.0f} | {v['p95']:.0f} | "
                         + ("" if alone is None else f"{alone:.0f}"))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        r = lat["runs"][n]
        beyond = r["beyond_alone_ms"]
        why = (" (negative: transcription, LLM and first-clause TTS ran during the end-of-turn "
               "wait, speculatively)" if beyond < 0 else "")
        lines.append(f"- {n}: {r['completed']}/{r['turns']} turns completed; end of turn to "
                     f"first audio beyond the models alone: {beyond:.0f} ms{why}; "
                     f"of it outside any model call: p50 {r['server_overhead_ms']:.1f} ms, "
                     f"p95 {r['server_overhead_p95_ms']:.1f} ms.")
        alone = r["direct_compute_ms"]
        if "llm_ttft_cold" in alone:
            lines.append(f"- {n}: LLM time to first token alone, median: "
                         f"{alone['llm_ttft_cold']:.0f} ms cold (llama.cpp's cache empty), "
                         f"{alone['llm_ttft_warm']:.0f} ms warm (system prompt cached).")
    return [*lines, "", *transport_lines(lat)]


def transport_lines(lat: dict[str, Any]) -> list[str]:
    """The same questions over the WebSocket and over WebRTC, and the server's CPU per call."""
    if not any(r.get("transport") == "webrtc" for r in lat["runs"].values()):
        return []

    def cell(run: dict[str, Any], stage: str) -> str:
        v = run["stages_ms"].get(stage)
        return f"{v['p50']:.0f} / {v['p95']:.0f}" if v else ""

    lines = ["### Over the WebSocket and over WebRTC", "",
             "The same questions through the same server in the same run, the two transports "
             "taking turns question by question, one fresh session or call each. Over WebRTC "
             "the question is played on the call's microphone track (Opus, 20 ms frames at "
             "48 kHz, real-time pace), and the client's clock runs from the end of the speech "
             "on the microphone's pacing clock to the first voiced frame of the answer track "
             "(above -54 dBFS, after aiortc's jitter buffer and Opus decoder); over the "
             "WebSocket, from the end of the speech on the sender's pacing clock to the first "
             "`response.output_audio.delta`. `buffer started` is the arrival of "
             "`output_audio_buffer.started` on the data channel, on the same clock.", "",
             "| run | transport | turns completed | voice to voice p50 / p95 ms (server) | "
             "client's clock p50 / p95 ms | buffer started p50 / p95 ms |",
             "|---|---|---|---|---|---|"]
    for name, r in lat["runs"].items():
        lines.append(f"| {name} | {r.get('transport', 'websocket')} | "
                     f"{r['completed']}/{r['turns']} | {cell(r, 'voice_to_voice')} | "
                     f"{cell(r, 'client_voice_to_voice')} | {cell(r, 'client_buffer_started')} |")
    lines.append("")
    for name, cost in lat.get("cpu_per_call", {}).items():
        rates, extra = cost["cpu_s_per_s"], cost["webrtc_over_websocket"]
        lines += [f"The server's CPU seconds per second of call, {name}: one call at a time, "
                  f"{cost['window_s']:g} s windows, less the server with nobody connected "
                  f"({cost['nobody_cpu_s_per_s']:.3f}). Idle: connected, nothing said (over "
                  "WebRTC the caller's microphone track still carries Opus-coded silence, 50 "
                  "frames a second); talking: the questions "
                  "spoken one after another, each answered. The difference is Opus, SRTP and "
                  "the track's pacing against base64 and JSON.", "",
                  "| call | WebSocket | WebRTC | WebRTC - WebSocket |", "|---|---|---|---|"]
        for state in ("idle", "talking"):
            lines.append(f"| {state} | {rates[f'websocket_{state}']:.3f} | "
                         f"{rates[f'webrtc_{state}']:.3f} | {extra[state]:+.3f} |")
        lines.append("")
    return lines


def load_section(load: dict[str, Any]) -> list[str]:
    lines = ["## Concurrent sessions", "",
             "Each of N clients streams one spoken question at real-time pace into its own "
             "session, the starts 250 ms apart. `end-of-turn lag` is how much later than "
             "the configured silence the server declared the turn over: when it grows, the "
             "server no longer keeps up with real time.", "",
             "![latency against sessions](img/sessions.png)", "",
             "| sessions | completed | v2v p50 ms | v2v p95 ms | end-of-turn lag p95 ms | "
             "keeps up | server CPU % | peak RSS MiB | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in load["steps"]:
        lines.append(f"| {s['sessions']} | {s['completed']} | {s['v2v_p50_ms']:.0f} | "
                     f"{s['v2v_p95_ms']:.0f} | {s['endpoint_lag_p95_ms']:.0f} | "
                     f"{'yes' if s['keeps_up'] else 'no'} | {s.get('cpu_percent', 0):.0f} | "
                     f"{s.get('peak_mib', 0):.0f} | {s.get('threads', 0):.0f} |")
    lines.append("")
    first = load.get("first_level_not_keeping_up")
    lines.append("- The first level that did not keep up with real time: "
                 + (f"{first} sessions." if first else "none of those measured."))
    if "idle_session_mib" in load:
        lines.append(f"- Memory: {load['baseline_rss_mib']:.0f} MiB for the server with its "
                     f"models; {load['idle_session_mib']:.2f} MiB per idle session; "
                     f"{load['active_session_mib']:.1f} MiB per active session (the peak RSS "
                     "growth with the most sessions talking at once, divided by their number; "
                     "most of it is the models' working memory, not the sessions').")
    return [*lines, ""]


def peers_section(peers: dict[str, Any]) -> list[str]:
    """Voxwire and Pipecat side by side (`make bench-peers`): same machine, models and run."""
    m, vox, pc = peers["machine"], peers["systems"]["voxwire"], peers["systems"]["pipecat"]
    lines = ["## Beside Pipecat: same machine, models, client and run", "",
             f"`make bench-peers` installs Pipecat {peers['peer_versions']['pipecat-ai']} from "
             "PyPI in its own environment (`.venv-peers`) and wires it to Voxwire's embedded "
             "models: silero VAD, Whisper `tiny.en` (int8, CPU), SmolLM2-135M through "
             "llama.cpp's OpenAI-compatible server (Voxwire's LLM threads and context) and "
             "piper `joe`, with Voxwire's system prompt, temperature 0 and answer length. "
             "Pipecat keeps its own defaults (VAD stop 0.2 s, Smart Turn v3, Whisper beam 5, "
             "a full sentence before synthesis, the libraries' own thread counts for Whisper "
             "and piper, which it does not set); Voxwire keeps its own. The same client (the "
             "`openai` SDK's realtime client; Pipecat gets a small serializer for the "
             f"Realtime events) speaks the same {vox['turns']} questions to each (voices: "
             f"{peers['settings']['voices']}), one fresh session per question, in the same "
             "run. Voice to voice runs from the end of speech in the audio sent to the first "
             "synthesized audio received.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}.", "",
             "| | Voxwire | Pipecat |", "|---|---|---|",
             f"| turns completed | {vox['completed']}/{vox['turns']} | "
             f"{pc['completed']}/{pc['turns']} |"]
    for label, key in (("voice to voice p50 ms", "p50"), ("voice to voice p95 ms", "p95"),
                       ("voice to voice min ms", "min"), ("voice to voice max ms", "max")):
        lines.append(f"| {label} | {vox['v2v_ms'][key]:.0f} | {pc['v2v_ms'][key]:.0f} |")
    lines += [f"| end of speech to end of turn, p50 ms | {vox['turn_end_ms']['p50']:.0f} | "
              f"{pc['turn_end_ms']['p50']:.0f} |",
              f"| turns ended more than 2 s after the speech | {vox['late_turn_ends']} | "
              f"{pc['late_turn_ends']} |",
              f"| transcript WER | {vox['wer']:.3f} | {pc['wer']:.3f} |", "",
              f"Pipecat's median voice to voice is {peers['p50_ratio']:.2f} times Voxwire's."]
    held = [t for t in pc["raw"] if t["stages_ms"].get("turn_detection", 0) > 1000]
    if held:
        voices = ", ".join(sorted({t.get("voice", "?") for t in held}))
        lines.append(f"In {len(held)} of Pipecat's turns (voices: {voices}) Smart Turn judged "
                     "the speech unfinished, and Pipecat waited out its user-turn stop timeout "
                     "(5 s by default): `turn_detection` below.")
    lines += ["",
              "Each system's own breakdown, p50 ms, on its own clock from its own estimate "
              "of the end of speech (Voxwire's `stages_ms`; the contributions of Pipecat's "
              "latency observer). Pipecat's parts add up to its voice to voice; Voxwire's "
              "overlap the end of turn, as it transcribes and starts answering during that "
              "wait and releases the answer when the turn is confirmed.", "",
              "| stage | Voxwire | Pipecat |", "|---|---|---|"]
    for stage, keys in peers["stage_keys"].items():
        names = " / ".join(" + ".join(f"`{k}`" for k in keys[s]) for s in ("voxwire", "pipecat"))
        lines.append(f"| {stage} ({names}) | {vox['stages_ms'][stage]['p50']:.0f} | "
                     f"{pc['stages_ms'][stage]['p50']:.0f} |")
    return [*lines, ""]


def splice(page: Path, section: list[str]) -> Path:
    """Put ``section`` (its first line a `## ` heading) in place of the section of ``page``
    under the same heading, up to the next `## ` heading, leaving the rest as it is; at the
    end of the page when it has no such section."""
    heading = section[0]
    lines = page.read_text().split("\n") if page.is_file() else []
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = section
    else:
        lines += ["", *section] if lines else section
    page.write_text("\n".join(lines))
    return page


def splice_latency(results: Path, docs: Path) -> Path:
    """docs/benchmarks.md's latency section (and its plot) from latency.json, nothing else."""
    lat = json.loads((results / "latency.json").read_text())
    (docs / "img").mkdir(parents=True, exist_ok=True)
    stage_bars(lat, docs / "img" / "stages.png")
    return splice(docs / "benchmarks.md", latency_section(lat))


def splice_soak(results: Path, docs: Path) -> Path:
    """docs/benchmarks.md's soak section from soak.json, nothing else."""
    return splice(docs / "benchmarks.md",
                  soak_section(json.loads((results / "soak.json").read_text())))


def splice_peers(results: Path, docs: Path) -> Path:
    """docs/benchmarks.md's Pipecat section from peers.json, nothing else."""
    return splice(docs / "benchmarks.md",
                  peers_section(json.loads((results / "peers.json").read_text())))


# The sections `write` makes from the results; any other `## ` section of the page was
# written by hand (the measurements of `bench.pauses`, `bench.overlap` ...) and is kept.
GENERATED = ("## Voice-to-voice latency", "## Concurrent sessions", "## Soak",
             "## Beside Pipecat", "## Voxwire evaluation", "## GPU")


def kept_sections(page: Path) -> list[str]:
    """The `## ` sections of ``page`` that `write` does not make, in their order."""
    if not page.is_file():
        return []
    kept: list[str] = []
    keep = False
    for line in page.read_text().split("\n"):
        if line.startswith("## "):
            keep = not line.startswith(GENERATED)
        if keep:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def write(results: Path, docs: Path, eval_markdown: str | None = None) -> Path:
    """The whole page from the results, with the sections written by hand kept (before
    the GPU section)."""
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    lat, load = _load(results / "latency.json"), _load(results / "load.json")
    parts = ["# Voxwire benchmarks", "",
             "Rerun everything with `make bench` (latency for `tiny.en` and `base`, the "
             "concurrency sweep, the soak, the evaluation suite, then this page; `make bench-soak` "
             "the soak alone): JSON lands in "
             "`bench/results/`, plots in `docs/img/`. Single runs on a shared machine vary "
             "by 20-40 %: compare figures from the same run only.", ""]
    if lat:
        stage_bars(lat, img / "stages.png")
        parts += latency_section(lat)
    if load:
        sessions_plot(load, img / "sessions.png")
        parts += load_section(load)
    soak = _load(results / "soak.json")
    if soak:
        parts += soak_section(soak)
    peers = _load(results / "peers.json")
    if peers:
        parts += peers_section(peers)
    if eval_markdown:  # one heading level down, under this page's title
        parts += [re.sub(r"^(#+) ", r"#\1 ", eval_markdown, flags=re.M), ""]
    out = docs / "benchmarks.md"
    kept = kept_sections(out)
    parts += [*kept, ""] if kept else []
    parts += ["## GPU", "", "With an NVIDIA GPU, `voxwire serve --device cuda` (or `make bench "
              "BENCH_ARGS='--device cuda'`) runs Whisper there in float16. No GPU figures have "
              "been measured yet; this page gets a row when one is.", ""]
    out.write_text("\n".join(parts))
    return out
