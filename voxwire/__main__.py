"""The `voxwire` command. Each subcommand lives in its own package and is imported only
when it runs, so that an install with only the client (``pip install voxwire[client]``,
a kiosk) runs `voxwire talk` without the server's models, and one without matplotlib
serves."""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple, Protocol, cast


class Command(NamedTuple):
    module: str
    extra: str  # what to install for it: voxwire[extra]
    help: str
    whole_argv: bool = False  # the module's main parses the subcommand's name too


COMMANDS = {
    "serve": Command("server.cli", "server", "run the realtime server", True),
    "models": Command("server.cli", "server",
                      "list the embedded models and verify their checksums", True),
    "history": Command("server.cli", "server", "list or export stored conversations (JSON)",
                       True),
    "talk": Command("client.talk", "client", "talk to a server with this machine's microphone"),
    "bench": Command("bench.__main__", "bench",
                     "run every benchmark and write docs/benchmarks.md"),
    "eval": Command("bench.evaluate", "bench",
                    "the evaluation suite (WER, hallucination, turns, echo, vision)"),
}


class _Main(Protocol):
    def main(self, argv: list[str] | None = None) -> int: ...


def usage() -> str:
    lines = [f"  {name:<9} {cmd.help}" for name, cmd in COMMANDS.items()]
    return "usage: voxwire COMMAND [options]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"voxwire: unknown command {argv[0]!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    try:  # the commands import their heavy parts late, once their flags are read
        module = cast(_Main, importlib.import_module(cmd.module))
        return module.main(argv if cmd.whole_argv else argv[1:])
    except ModuleNotFoundError as exc:  # the extra that brings it is not installed
        print(f"voxwire {argv[0]}: {exc.name or exc} is not installed; install "
              f"voxwire[{cmd.extra}]", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
