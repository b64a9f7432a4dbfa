import dataclasses
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
