"""The SPD plan: the hand-off from calibration (one process) to deployment (simulated or torchrun).

A plan is a folder with two files:
- `plan.json`: model id and architecture, TP degree, per-block sensitivity, class, strategy and
  whether SPD is on, HG permutations, B2B loss curves, calibration settings, tau1/tau2, versions;
- `weights.safetensors`: the changed blocks' weights under their transformers state-dict names
  (`model.layers.{l}.self_attn.q_proj.weight`, ...). Only blocks recovered by B2B/HG are changed;
  zero-shot SPD blocks keep the original weights.

A plan is valid for one model architecture, one TP degree and one block count: SPD's approximation
depends on which heads share a rank (METHOD.md s.2), so loading checks all three and names both
values when they differ. `apply_plan` also checks a fingerprint of the embedding weights, so that a
plan is not applied to different weights of the same architecture.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from spd_ref.hf import apply_tp, decoder_layers

PLAN_FILE, WEIGHTS_FILE = "plan.json", "weights.safetensors"
FORMAT = 1
# Config fields that define the architecture a plan's block indices and weight shapes refer to.
SIGNATURE_FIELDS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size", "head_dim")
FINGERPRINT_RTOL = 1e-2  # [ours] loose enough for fp32 vs bf16 copies of the same weights
FINGERPRINT_ENTRIES = 16


@dataclass
class BlockRecord:
    """One block: its scan score, class, strategy, whether SPD is on, and what recovery did."""

    block: int
    sensitivity: float
    relative: float
    block_class: str
    strategy: str
    chosen: bool
    b2b: Optional[dict] = None  # DistillResult.as_dict()
    hg: Optional[dict] = None   # HeadGrouping.as_dict()


@dataclass
class Plan:
    model_id: str
    tp_degree: int
    num_blocks: int
    signature: dict[str, Any]
    fingerprint: list[float]
    base_ppl: float
    spd_blocks: list[int]
    blocks: list[BlockRecord]
    settings: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def table(self) -> str:
        """Per-block table: block, sensitivity (absolute and % of base PPL), class, strategy, chosen."""
        rows = [f"{'block':>5} {'s_l':>9} {'s_l/PPL':>8}  {'class':<20} {'strategy':<8} chosen"]
        for r in self.blocks:
            rows.append(f"{r.block:>5} {r.sensitivity:>9.4f} {100 * r.relative:>7.2f}%  {r.block_class:<20} "
                        f"{r.strategy:<8} {'yes' if r.chosen else '-'}")
        return "\n".join(rows)


def num_spd_blocks(ratio: float, num_blocks: int) -> int:
    """round(ratio * L), halves rounded up (Python's round() would round 2.5 to 2)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio={ratio} is outside [0, 1]: it is the share of blocks given SPD. "
                         "Fix: use 0 <= ratio <= 1 (e.g. 0.5).")
    return int(math.floor(ratio * num_blocks + 0.5))


def choose_blocks(scores: Sequence[float], ratio: float) -> list[int]:
    """The round(ratio * L) least sensitive blocks (ties: lower index first), in ascending order."""
    order = sorted(range(len(scores)), key=lambda l: (scores[l], l))
    return sorted(order[:num_spd_blocks(ratio, len(scores))])


def config_signature(config) -> dict[str, Any]:
    """The architecture fields of a transformers config (head_dim filled in when the config omits it)."""
    sig = {k: getattr(config, k, None) for k in SIGNATURE_FIELDS}
    sig["num_key_value_heads"] = sig["num_key_value_heads"] or config.num_attention_heads
    sig["head_dim"] = sig["head_dim"] or config.hidden_size // config.num_attention_heads
    return sig


def weight_fingerprint(model: nn.Module) -> list[float]:
    """RMS and 16 evenly spaced entries of the input embedding (SPD plans never change it)."""
    w = model.get_input_embeddings().weight.detach().double().flatten()
    picks = torch.arange(FINGERPRINT_ENTRIES) * (w.numel() - 1) // (FINGERPRINT_ENTRIES - 1)  # ints: exact
    return [w.pow(2).mean().sqrt().item()] + w[picks].tolist()


def package_versions() -> dict[str, str]:
    import transformers

    from spd_ref import __version__
    return {"spd_ref": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def check_plan(plan: Plan, model_config=None, tp_degree: Optional[int] = None) -> None:
    """Raise ValueError naming both values when the plan does not fit this model / TP degree."""
    if model_config is not None:
        layers = model_config.num_hidden_layers
        if layers != plan.num_blocks:
            raise ValueError(f"the plan is for a model with {plan.num_blocks} blocks ({plan.model_id!r}); this "
                             f"model has {layers}. Fix: load the model the plan was made for, or calibrate this one.")
        sig = config_signature(model_config)
        diff = {k: (plan.signature.get(k), v) for k, v in sig.items() if plan.signature.get(k) != v}
        if diff:
            said = ", ".join(f"{k}: plan {a!r} vs model {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"the plan was made for another model ({plan.model_id!r}): {said}. Fix: load the "
                             "model the plan was made for, or calibrate this one.")
    if tp_degree is not None and tp_degree != plan.tp_degree:
        raise ValueError(f"the plan was calibrated for tp_degree={plan.tp_degree}, not tp_degree={tp_degree}: "
                         "SPD's error depends on how heads are split over ranks. Fix: run with "
                         f"tp_degree={plan.tp_degree}, or calibrate again with tp_degree={tp_degree}.")


def write_atomically(path: Path, write) -> None:
    """`write(tmp)` a sibling temporary file, then rename it to `path`: a reader sees the old file or the new."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_plan(plan: Plan, directory: str | Path) -> Path:
    """Write plan.json and weights.safetensors into `directory` (created); returns the folder.

    Interrupted at any point, it never leaves a plan that loads with the wrong weights: an old plan.json
    goes first, each file is written under a temporary name and renamed into place, and plan.json, which
    holds the weights' checksum, comes last. (The folder itself may hold other files: it is not replaced.)
    """
    from safetensors.torch import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN_FILE).unlink(missing_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in plan.weights.items()}
    write_atomically(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": str(FORMAT)}))
    meta = {k: v for k, v in asdict(plan).items() if k != "weights"}
    meta["format"] = FORMAT
    meta["weights_file"] = WEIGHTS_FILE
    meta["weights_sha256"] = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    write_atomically(folder / PLAN_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
    return folder


def _read_plan(directory: str | Path) -> tuple[dict, Path]:
    """plan.json's fields (format and weights checksum verified, blocks as BlockRecords) and the weights path."""
    path = Path(directory)
    folder = path.parent if path.name == PLAN_FILE else path
    fix = "Fix: give the folder that `python -m spd_ref calibrate --out DIR` wrote"
    if not (folder / PLAN_FILE).is_file():
        raise FileNotFoundError(f"no {PLAN_FILE} in {str(folder)!r}. {fix}.")
    try:
        meta = json.loads((folder / PLAN_FILE).read_text())
    except ValueError as err:
        raise ValueError(f"{folder / PLAN_FILE} is not valid JSON ({err}). {fix}, or calibrate again.") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / PLAN_FILE} has format {meta.get('format')!r}; this spd_ref reads format "
                         f"{FORMAT}. Fix: calibrate again with this version.")
    weights_path = folder / meta.pop("weights_file")
    expected = meta.pop("weights_sha256")
    if not weights_path.is_file() or hashlib.sha256(weights_path.read_bytes()).hexdigest() != expected:
        raise ValueError(f"{weights_path} is missing or does not match the checksum in {PLAN_FILE} (changed or "
                         "truncated). Fix: calibrate again.")
    meta.pop("format")
    meta["blocks"] = [BlockRecord(**b) for b in meta["blocks"]]
    return meta, weights_path


def check_plan_folder(directory: str | Path, model_config=None, tp_degree: Optional[int] = None) -> Plan:
    """The plan without its weights, checked as `load_plan` checks it: for commands, before they load a model."""
    plan = Plan(**_read_plan(directory)[0])
    check_plan(plan, model_config, tp_degree)
    return plan


def load_plan(directory: str | Path, model_config=None, tp_degree: Optional[int] = None) -> Plan:
    """Read a plan folder (or its plan.json) and validate it against `model_config` and `tp_degree`."""
    from safetensors.torch import load_file

    meta, weights_path = _read_plan(directory)
    plan = Plan(**meta, weights=load_file(str(weights_path)))
    check_plan(plan, model_config, tp_degree)
    return plan


def merged_state_dict(plan: Plan, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with the plan's weights in place of the originals (for spd_ref.model.TPTransformer)."""
    unknown = sorted(set(plan.weights) - set(state_dict))
    if unknown:
        raise ValueError(f"plan weight {unknown[0]!r} is not in the model's state dict. Fix: apply the plan to "
                         f"the model it was made for ({plan.model_id!r}).")
    merged = dict(state_dict)
    for name, tensor in plan.weights.items():
        merged[name] = tensor.to(dtype=state_dict[name].dtype, device=state_dict[name].device)
    return merged


def check_fingerprint(plan: Plan, model: nn.Module) -> None:
    got, want = weight_fingerprint(model), plan.fingerprint
    rms = want[0]
    if abs(got[0] - rms) > FINGERPRINT_RTOL * rms or any(abs(a - b) > FINGERPRINT_RTOL * rms
                                                       for a, b in zip(got[1:], want[1:])):
        raise ValueError(f"the model's embedding weights (rms {got[0]:.4g}, entries {got[1:4]}...) differ from the "
                         f"plan's (rms {rms:.4g}, entries {want[1:4]}...): same architecture, other weights than "
                         f"{plan.model_id!r}. Fix: load that model.")


ORIGINAL_WEIGHTS = "_spd_plan_replaced"  # model attribute: the weights a plan overwrote, as they were


@torch.no_grad()
def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Simulated runtime: load the plan's weights into `model` (in place), then apply_tp with its TP
    degree and SPD blocks. The model must be the one the plan was calibrated on.

    A model that already carries a plan is reset first: the weights an earlier apply_plan replaced
    are put back (the model keeps them, one copy of the changed blocks), so no block of another plan
    leaks into this one.
    """
    check_plan(plan, model.config)
    check_fingerprint(plan, model)
    params = dict(model.named_parameters())
    unknown = sorted(set(plan.weights) - set(params))
    if unknown:
        raise ValueError(f"plan weight {unknown[0]!r} is not a parameter of this model. Fix: apply the plan "
                         f"to the model it was made for ({plan.model_id!r}).")
    replaced = getattr(model, ORIGINAL_WEIGHTS, {})
    for name, tensor in replaced.items():
        params[name].copy_(tensor)
    replaced.update({name: params[name].detach().clone() for name in plan.weights if name not in replaced})
    setattr(model, ORIGINAL_WEIGHTS, replaced)
    for name, tensor in plan.weights.items():
        params[name].copy_(tensor)
    apply_tp(model, plan.tp_degree, plan.spd_blocks)
    return model


def block_prefix(model: nn.Module, block: int) -> str:
    """The state-dict prefix of decoder layer `block`, e.g. "model.layers.3."."""
    target = decoder_layers(model)[block]
    for name, module in model.named_modules():
        if module is target:
            return name + "."
    raise ValueError(f"block {block} is not a submodule of the model")
