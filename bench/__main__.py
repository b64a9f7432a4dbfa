"""`python -m bench`: voice-to-voice latency per stage, through the server and alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.latency import QUESTIONS, render, run


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__)
    ap.add_argument("--asr", default="tiny.en,base", help="comma-separated Whisper models")
    ap.add_argument("--asr-mode", default="padded", choices=["padded", "short"])
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    args = ap.parse_args()
    results = run(args.asr.split(","), args.asr_mode, args.device, args.questions, args.port,
                  args.url, args.out)
    m = results["machine"]
    print(f"# Voxwire latency: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    print(render(results))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
