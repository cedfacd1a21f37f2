"""The offline model registry (spd_ref.models): wheels fetched with pip, parts concatenated, checked.

A fake registry entry is served from local wheels (pip honours PIP_NO_INDEX / PIP_FIND_LINKS), so
nothing here downloads the Qwen models; the slow test converts SmolLM2's GGUF split in two wheels.
"""
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from spd_ref.models import OFFLINE_MODELS, OfflineModel, _sha256, fetch_gguf, load_model


def make_wheel(folder: Path, project: str, member: str, data: bytes) -> str:
    """A minimal valid wheel `project==1.0` holding `member`; returns its pip requirement."""
    dist = project.replace("-", "_")
    info = f"{dist}-1.0.dist-info"
    with zipfile.ZipFile(folder / f"{dist}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return f"{project}==1.0"


def fake_entry(folder: Path, parts: list[bytes], name: str = "fake", sha256: str | None = None) -> OfflineModel:
    wheels, members = [], []
    for n, data in enumerate(parts, 1):
        members.append(f"fake_part{n}/data/part{n:02d}.bin")
        wheels.append(make_wheel(folder, f"spd-ref-fake-part{n}", members[-1], data))
    whole = b"".join(parts)
    return OfflineModel(name, f"{name}-folder", f"{name}.gguf", tuple(wheels), tuple(members), len(whole),
                        sha256 or hashlib.sha256(whole).hexdigest(), "test data")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only the wheels in tmp_path/wheels; the model cache is tmp_path/cache."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("SPD_REF_CACHE", str(tmp_path / "cache"))
    return wheels


def test_parts_are_concatenated_in_order_and_cached(local_index, capsys):
    parts = [bytes([n]) * (1000 + n) for n in range(3)]
    entry = fake_entry(local_index, parts)
    path = fetch_gguf(entry)
    assert path.read_bytes() == b"".join(parts)
    assert "downloading part 3/3" in capsys.readouterr().err  # progress is shown
    for wheel in local_index.iterdir():
        wheel.unlink()
    assert fetch_gguf(entry) == path  # the second use downloads nothing


def test_checksum_mismatch_is_refused_and_nothing_kept(local_index):
    entry = fake_entry(local_index, [b"abc", b"def"], sha256="0" * 64)
    with pytest.raises(RuntimeError, match=r"(?s)6 bytes and sha256 .*expected 6 bytes and 0{64}.*nothing was kept"):
        fetch_gguf(entry)
    assert not list(Path(local_index.parent / "cache").glob("fake.gguf*"))


def test_missing_wheel_names_the_package_and_the_fix(local_index):
    entry = fake_entry(local_index, [b"abc"])
    entry = OfflineModel(**{**entry.__dict__, "wheels": ("spd-ref-no-such-part==1.0",)})
    with pytest.raises(RuntimeError, match=r"(?s)could not download spd-ref-no-such-part==1.0.*Fix: check that pip"):
        fetch_gguf(entry)
    assert not list(Path(local_index.parent / "cache").glob("fake.gguf*"))


def test_smollm2_entry_matches_the_cached_file(smollm2):
    entry = OFFLINE_MODELS["smollm2"]
    gguf = fetch_gguf(entry)  # the fixture fetched it: no download
    assert gguf.stat().st_size == entry.size and _sha256(gguf) == entry.sha256


@pytest.mark.slow
def test_split_gguf_converts_to_the_same_model(local_index, monkeypatch, smollm2):
    """SmolLM2's GGUF cut into two wheels goes through download, concatenation, check and conversion."""
    cached = Path(smollm2[0].name_or_path).parent  # the real cache (local_index points elsewhere)
    data = (cached / OFFLINE_MODELS["smollm2"].gguf_name).read_bytes()
    entry = fake_entry(local_index, [data[: len(data) // 2], data[len(data) // 2:]], name="smol-split")
    monkeypatch.setitem(OFFLINE_MODELS, entry.name, entry)
    model, tok = load_model(entry.name)
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, smollm2[0](ids).logits)
    assert model.float() is model  # a clean config: no quantization_config left to refuse .float()
