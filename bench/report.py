"""docs/benchmarks.md from the JSON results, with the plots beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.plots import sessions_plot, stage_bars

STAGES = ["endpoint", "asr", "llm_first_token", "first_sentence", "tts_first_audio", "send",
          "voice_to_voice", "client_voice_to_voice"]


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def latency_section(lat: dict[str, Any]) -> list[str]:
    m = lat["machine"]
    names = list(lat["runs"])
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
            v = lat["runs"][n]["stages_ms"][stage]
            alone = lat["runs"][n]["direct_compute_ms"].get(stage)
            cells.append(f"{v['p50']:.0f} | {v['p95']:.0f} | "
                         + ("" if alone is None else f"{alone:.0f}"))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        r = lat["runs"][n]
        beyond = r["beyond_alone_ms"]
        why = (" (negative: the transcription ran during the end-of-turn wait, speculatively)"
               if beyond < 0 else "")
        lines.append(f"- {n}: {r['completed']}/{r['turns']} turns completed; end of turn to "
                     f"first audio beyond the models alone: {beyond:.0f} ms{why}; "
                     f"of it outside any model call: p50 {r['server_overhead_ms']:.1f} ms, "
                     f"p95 {r['server_overhead_p95_ms']:.1f} ms.")
    return [*lines, ""]


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


def write(results: Path, docs: Path, eval_markdown: str | None = None) -> Path:
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    lat, load = _load(results / "latency.json"), _load(results / "load.json")
    parts = ["# Voxwire benchmarks", "",
             "Rerun everything with `make bench` (latency for `tiny.en` and `base`, the "
             "concurrency sweep, the evaluation suite, then this page): JSON lands in "
             "`bench/results/`, plots in `docs/img/`. Single runs on a shared machine vary "
             "by 20-40 %: compare figures from the same run only.", ""]
    if lat:
        stage_bars(lat, img / "stages.png")
        parts += latency_section(lat)
    if load:
        sessions_plot(load, img / "sessions.png")
        parts += load_section(load)
    if eval_markdown:  # one heading level down, under this page's title
        parts += [re.sub(r"^(#+) ", r"#\1 ", eval_markdown, flags=re.M), ""]
    parts += ["## GPU", "", "With an NVIDIA GPU, `voxwire serve --device cuda` (or `make bench "
              "BENCH_ARGS='--device cuda'`) runs Whisper there in float16. No GPU figures have "
              "been measured yet; this page gets a row when one is.", ""]
    out = docs / "benchmarks.md"
    out.write_text("\n".join(parts))
    return out
