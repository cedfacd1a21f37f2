"""The environment is one list of exact pins (requirements.txt) and the venv holds exactly those."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import spd_ref

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def test_environment_yml_delegates_to_requirements() -> None:
    # Conda users get the same pins: python 3.11, pip, and pip reading requirements.txt, nothing else.
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert pip_sections == [["-r requirements.txt"]], f"environment.yml pip section: {pip_sections}"


def test_torch_pinned_exactly() -> None:
    # A range would pull a multi-GB CUDA build here; 2.13.0 exactly takes the local CPU wheel.
    torch_reqs = [r for r in _requirements() if r.name == "torch"]
    assert [str(r.specifier) for r in torch_reqs] == ["==2.13.0"]


def test_every_requirement_is_pinned() -> None:
    unpinned = [str(r) for r in _requirements()
                if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    assert not unpinned, f"pin these with == in requirements.txt: {unpinned}"


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_installed_version_matches_pin(req: Requirement) -> None:
    # Local labels are ignored by a public pin (PEP 440), so torch 2.13.0+cpu satisfies ==2.13.0.
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), (
        f"{req.name} {installed} is installed but requirements.txt pins {req.specifier}; "
        "run `make setup` (or pip install -r requirements.txt) in the venv")


def test_spd_ref_installed_from_this_checkout() -> None:
    # `pip install -e .` makes notebooks and torchrun workers import this source tree, not a stale copy.
    assert Path(spd_ref.__file__).resolve().parent == ROOT / "spd_ref"
