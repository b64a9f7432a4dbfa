"""`python -m bench` (`voxwire bench`, `make bench`): every benchmark, then docs/benchmarks.md.

1. voice-to-voice latency per stage, through the server (over the WebSocket and over
   WebRTC, `--transports`) and with the models alone; the server's CPU per call by transport;
2. concurrent sessions: latency, keeping up with real time, CPU and memory;
3. the soak: many sessions, idle and misbehaving ones among them, WebRTC calls that hang up
   or vanish, held for minutes;
4. the evaluation suite (`voxwire eval`): WER, hallucination, turn-taking, echo, vision;
5. the report: JSON in bench/results/, plots in docs/img/, docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench import evaluate, load, report, soak
from bench.latency import QUESTIONS, make_fixtures, render, run, server_process


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxwire bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asr", default="tiny.en,base", help="comma-separated Whisper models")
    ap.add_argument("--asr-mode", default="short", choices=["padded", "short"])
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--sessions", default="1,2,4,8", help="concurrency levels to sweep")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--url", help="measure latency against a running server instead")
    ap.add_argument("--transports", default="websocket,webrtc",
                    help="the latency rows: websocket, webrtc or both (comma-separated)")
    ap.add_argument("--cost-window-s", type=float, default=15.0,
                    help="each window of the server's CPU per call (0: not measured)")
    ap.add_argument("--soak-rtc-callers", type=int, default=1,
                    help="WebRTC callers in the soak (each talks once a call, then leaves)")
    ap.add_argument("--soak-s", type=float, default=180.0, help="how long the soak lasts")
    ap.add_argument("--only", choices=["latency", "load", "soak", "eval", "report"])
    ap.add_argument("--results", type=Path, default=Path("bench/results"))
    ap.add_argument("--splice", action="store_true",
                    help="with --only latency or soak: replace that section of "
                         "docs/benchmarks.md and nothing else")
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    if not transports or set(transports) - {"websocket", "webrtc"}:
        ap.error("--transports takes websocket, webrtc or both")
    started = time.monotonic()
    steps = [args.only] if args.only else ["latency", "load", "soak", "eval", "report"]
    if "latency" in steps:
        results = run(args.asr.split(","), args.asr_mode, args.device, args.questions,
                      args.port, args.url, args.results / "latency.json", transports,
                      args.cost_window_s)
        m = results["machine"]
        print(f"# Voxwire latency: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
        print(render(results))
        if args.splice:
            page = report.splice_latency(args.results, args.docs)
            print(f"spliced the latency section into {page}")
    if "load" in steps:
        fixtures = make_fixtures(QUESTIONS[:4])
        levels = [int(n) for n in args.sessions.split(",")]
        server_args = ["--asr-model", args.asr.split(",")[0], "--device", args.device,
                       "--log-level", "WARNING"]
        with server_process(args.port, server_args) as (url, pid):
            swept = asyncio.run(load.sweep(url, fixtures, levels, pid))
        (args.results / "load.json").write_text(json.dumps(swept, indent=2))
        print("\n".join(report.load_section(swept)))
    if "soak" in steps:
        soaked = soak.run(soak.Plan(duration_s=args.soak_s,
                                    rtc_callers=args.soak_rtc_callers), args.port,
                          ["--asr-model", args.asr.split(",")[0], "--device", args.device],
                          args.results / "soak.json")
        print("\n".join(soak.section(soaked)))
        if args.splice:
            page = report.splice_soak(args.results, args.docs)
            print(f"spliced the soak section into {page}")
    eval_md = None
    if "eval" in steps:
        evaluate.main(["--asr", args.asr.split(",")[0], "--port", str(args.port + 1),
                       "--out", str(args.results / "eval.json")])
    eval_json = args.results / "eval.json"
    if eval_json.is_file():
        eval_md = evaluate.render(json.loads(eval_json.read_text()))
    if "report" in steps or not args.only:
        page = report.write(args.results, args.docs, eval_md)
        print(f"\nwrote {page} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
