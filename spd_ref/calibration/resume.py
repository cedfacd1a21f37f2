"""Resuming an interrupted calibration: finished work is kept on disk as it completes.

`python -m spd_ref calibrate --out DIR` keeps in DIR/.calibration/ the sensitivity scan once it is
done and each recovered block as soon as it is trained (its weights, its HG and B2B records), every
file written under a temporary name and renamed. Run the same command again after Ctrl-C or a kill
and it continues from there: the scan and the finished blocks are read back, not recomputed. A
checkpoint belongs to one model and one set of arguments (settings.json); a run with others starts
afresh. The command removes it once the plan is written.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from spd_ref.calibration.sensitivity import SensitivityScan
from spd_ref.plan import write_atomically

FOLDER = ".calibration"  # inside the plan's --out folder
Recovered = tuple[dict[str, torch.Tensor], Optional[dict], Optional[dict]]  # calibrate.recover_block's result


class Checkpoint:
    """The finished parts of one calibration, in `folder`, for the calibration `settings`.
    Checkpoint(None) keeps nothing: every step is computed."""

    def __init__(self, folder: Optional[str | Path], settings: Optional[dict] = None):
        self.reused: list[str] = []  # what was read back instead of computed, for the summary line
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            return
        saved = self.folder / "settings.json"
        if saved.is_file() and json.loads(saved.read_text()) != settings:
            print(f"note: {self.folder} holds an interrupted calibration with other settings; starting afresh",
                  file=sys.stderr)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(saved, lambda tmp: tmp.write_text(json.dumps(settings, indent=1)))

    def scan(self, compute: Callable[[], SensitivityScan]) -> SensitivityScan:
        if self.folder is None:
            return compute()
        path = self.folder / "scan.json"
        if path.is_file():
            self.reused.append("scan")
            return SensitivityScan(**json.loads(path.read_text()))
        scan = compute()
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(asdict(scan))))
        return scan

    def block(self, block: int, compute: Callable[[], Recovered]) -> Recovered:
        from safetensors.torch import load_file, save_file

        if self.folder is None:
            return compute()
        stem = self.folder / f"block{block}"
        weights, records = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        if records.is_file():  # written last: its presence means the block is complete
            self.reused.append(f"block {block}")
            hg_b2b = json.loads(records.read_text())
            return load_file(str(weights)), hg_b2b["hg"], hg_b2b["b2b"]
        tensors, hg, b2b = compute()
        write_atomically(weights, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))
        write_atomically(records, lambda tmp: tmp.write_text(json.dumps({"hg": hg, "b2b": b2b})))
        return tensors, hg, b2b

    def summary(self) -> str:
        """What this run read back, for the command's output ("" when nothing)."""
        return f"resumed an interrupted run: read back {', '.join(self.reused)}" if self.reused else ""

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
