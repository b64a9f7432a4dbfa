import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models import registry
from models.errors import ModelError


def test_every_embedded_model_installs_and_verifies() -> None:
    for spec in registry.load_manifest():
        st = registry.status(spec, force=spec.stage != "asr")  # re-hash the small ones
        assert st.ok, (spec.name, st.problems)
        assert st.path is not None and st.path.exists()


def test_joined_whisper_base_matches_its_checksum() -> None:
    spec = registry.get_spec("base", "asr")
    path = registry.locate("base", "asr") / "model.bin"
    assert not path.is_symlink()
    assert registry.sha256_of(path) == next(f.sha256 for f in spec.files if f.name == "model.bin")


def test_a_wrong_checksum_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXWIRE_CACHE", str(tmp_path))
    spec = registry.get_spec("silero-vad", "vad")
    bad = dataclasses.replace(spec, files=tuple(
        dataclasses.replace(f, sha256="0" * 64) for f in spec.files))
    st = registry.status(bad)
    assert not st.ok
    assert "sha256" in st.problems[0]


def test_unknown_model_names_are_clear_errors() -> None:
    with pytest.raises(ModelError, match=r"known: tiny\.en, base"):
        registry.get_spec("large-v9", "asr")


@pytest.mark.parametrize("garbage", [b"", b'{"model.onnx": [', b"[1, 2]", b"\x00\xff", b"null"])
def test_a_broken_stamp_is_verified_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          garbage: bytes) -> None:
    monkeypatch.setenv("VOXWIRE_CACHE", str(tmp_path))
    spec = registry.get_spec("silero-vad", "vad")
    assert registry.status(spec).ok
    stamp = registry.model_dir(spec) / ".verified.json"
    stamp.write_bytes(garbage)  # what a reader saw while another process rewrote it in place
    assert registry.status(spec).ok
    assert set(json.loads(stamp.read_text())) == {f.name for f in spec.files}
    assert [p.name for p in stamp.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_second_verification_writes_nothing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Models verified once (at a container image's build) start from a read-only disk."""
    monkeypatch.setenv("VOXWIRE_CACHE", str(tmp_path))
    spec = registry.get_spec("silero-vad", "vad")
    assert registry.status(spec).ok
    stamp = registry.model_dir(spec) / ".verified.json"
    before = stamp.stat()
    assert registry.status(spec).ok
    after = stamp.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


VERIFY_LOOP = """
import sys
from models import registry
spec = registry.get_spec("silero-vad", "vad")
for n in range(int(sys.argv[1])):
    st = registry.status(spec, force=n % 5 == 0)
    assert st.ok, st.problems
"""


def test_replicas_verifying_at_once_never_fail(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes and threads installing and verifying one model in one cache at once."""
    env = {**os.environ, "VOXWIRE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", VERIFY_LOOP, "40"], env=env,
                              stderr=subprocess.PIPE) for _ in range(4)]

    def in_thread(_: int) -> None:
        spec = registry.get_spec("silero-vad", "vad")
        for n in range(40):
            st = registry.status(spec, force=n % 5 == 0)
            assert st.ok, st.problems

    monkeypatch.setenv("VOXWIRE_CACHE", str(tmp_path))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(in_thread, range(4)))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
