"""A kiosk installs only the client: `pip install voxwire[client]` in a fresh virtualenv
gives a working `voxwire talk`, without the server's models or engines.

It installs from PyPI (pip's cache makes that quick), so it fails, naming pip's error,
where PyPI cannot be reached."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("voxwire", "realtime", "client", "server", "models", "bench")
# What the server and the benchmarks need, and a kiosk must not have to install.
NOT_FOR_THE_CLIENT = ("faster_whisper", "llama_cpp", "piper", "onnxruntime", "ctranslate2",
                      "matplotlib", "openai", "anthropic")


def run(*cmd: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd="/")  # not the checkout


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding `voxwire[client]`, built from a copy of the source (pip would
    otherwise write its build files into the checkout)."""
    tmp = tmp_path_factory.mktemp("client-install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    venv = tmp / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    pip = run(venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check",
              "-q", f"{source}[client]", timeout=240)
    assert pip.returncode == 0, f"pip install .[client] failed:\n{pip.stderr[-3000:]}"
    return venv


def test_talk_runs_with_only_the_client_installed(client_venv: Path) -> None:
    talk = run(client_venv / "bin" / "voxwire", "talk", "--help")
    assert talk.returncode == 0, talk.stderr
    assert "--url" in talk.stdout and "--duplex" in talk.stdout


def test_the_client_install_has_no_server_engines(client_venv: Path) -> None:
    probe = ("import importlib.util as u; "
             f"print([m for m in {NOT_FOR_THE_CLIENT!r} if u.find_spec(m) is not None])")
    found = run(client_venv / "bin" / "python", "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_the_client_never_imports_the_server(client_venv: Path) -> None:
    probe = ("import sys, client.talk, client.audio_io, client.realtime; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'bench')))")
    loaded = run(client_venv / "bin" / "python", "-c", probe)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "[]"), loaded.stderr


def test_serve_names_the_extra_it_needs(client_venv: Path) -> None:
    serve = run(client_venv / "bin" / "voxwire", "serve")
    assert serve.returncode == 2
    assert "install voxwire[server]" in serve.stderr, serve.stderr
