"""The server's commands: `voxwire serve`, `models` and `history` (see voxwire/__main__.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

from server.errors import VoxwireError
from server.runtime import config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the realtime server")
    config.add_arguments(serve)
    models = sub.add_parser("models", help="list the embedded models and verify their checksums")
    models.add_argument("--force", action="store_true", help="re-hash every file")
    history = sub.add_parser("history", help="list or export stored conversations (JSON)")
    history.add_argument("--store", default=None, help="default: the serve default, or "
                         "$VOXWIRE_STORE")
    history.add_argument("--session", default=None, help="export this session's turns")
    history.add_argument("--all", action="store_true", help="export every session's turns")
    history.add_argument("--audio", default=None, metavar="DIR", help="with --session or --all: "
                         "write recordings as DIR/<session>/<response_id>-<role>.wav")
    args = parser.parse_args(argv)
    try:
        if args.command == "history":
            return show_history(args)
        if args.command == "models":
            from models.__main__ import main as models_main

            return models_main(["--force"] if args.force else [])
        settings = config.from_sources(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from server.edge.app import App
        from server.runtime import tracing
        from server.runtime.heap import limit_arenas

        limit_arenas()  # before the models' threads start
        tracing.from_environment()  # OTEL_*: off unless an OTLP endpoint is set
        try:
            asyncio.run(App(settings).serve())
        finally:
            tracing.stop()  # what is queued goes out
        return 0
    except VoxwireError as exc:
        print(f"voxwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def show_history(args: argparse.Namespace) -> int:
    import json
    import os

    from server.errors import StoreError
    from server.runtime.store import NullStore, open_store

    url = args.store or os.environ.get("VOXWIRE_STORE") or config.Settings.store
    store = open_store(url, create=False)
    if isinstance(store, NullStore):
        print("voxwire history: no store configured (--store none)", file=sys.stderr)
        return 2
    if args.audio and not (args.session or args.all):
        print("voxwire history: --audio needs --session ID or --all", file=sys.stderr)
        return 2
    try:
        sessions = store.sessions()
        if args.session or args.all:
            wanted = [s for s in sessions if args.all or s["id"] == args.session]
            if not wanted:
                print(f"voxwire history: no session {args.session!r}", file=sys.stderr)
                return 2
            out = [{**s, "turns": store.turns(s["id"])} for s in wanted]
            if args.audio:
                for session in out:
                    export_audio(store.audio(session["id"]), session,
                                 Path(args.audio) / safe_name(session["id"]))
        else:
            out = sessions
        print(json.dumps(out, indent=2))
        return 0
    except (StoreError, OSError) as exc:
        print(f"voxwire history: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def export_audio(recordings: list[tuple[str, str, bytes]], session: dict[str, Any],
                 folder: Path) -> None:
    """Write each recording as a WAV file and name it in the session's exported turns."""
    listed = {(t["response_id"], r["role"]): r for t in session["turns"] for r in t["recordings"]}
    for response_id, role, wav in recordings:
        name = f"{safe_name(response_id)}-{role}.wav"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(wav)
        if (response_id, role) in listed:  # else recorded after the turns were read
            listed[response_id, role]["file"] = str(folder / name)


def safe_name(name: str) -> str:
    """An id as a file name: nothing but letters, digits, '-', '_' and '.' (no '..')."""
    return re.sub(r"[^A-Za-z0-9_.-]|^\.+", "_", name) or "_"


if __name__ == "__main__":
    sys.exit(main())
