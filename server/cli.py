"""The `voxwire` command: `serve` and `models`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server import config
from server.errors import VoxwireError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the realtime server")
    config.add_arguments(serve)
    models = sub.add_parser("models", help="list the embedded models and verify their checksums")
    models.add_argument("--force", action="store_true", help="re-hash every file")
    talk = sub.add_parser("talk", help="talk to a server with this machine's microphone")
    talk.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime")
    talk.add_argument("--device", type=int, default=None, help="input device number")
    talk.add_argument("--output-device", type=int, default=None, help="output device number")
    talk.add_argument("--camera", type=int, default=None,
                      help="send frames from /dev/videoN with each turn")
    talk.add_argument("--duplex", choices=["half", "full"], default="half",
                      help="half: the mic is muted while the answer plays (no echo); "
                           "full: always on, for headsets, allows interrupting by voice")
    talk.add_argument("--key", default=None, help="API key (default: $VOXWIRE_API_KEY)")
    talk.add_argument("--list-devices", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "talk":
            from client.talk import main as talk_main

            return talk_main(args)
        if args.command == "models":
            from models.__main__ import main as models_main

            return models_main(["--force"] if args.force else [])
        settings = config.from_sources(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from server.app import App

        asyncio.run(App(settings).serve())
        return 0
    except VoxwireError as exc:
        print(f"voxwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
