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
    args = parser.parse_args(argv)
    try:
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
