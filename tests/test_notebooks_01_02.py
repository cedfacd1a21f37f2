"""spd_ref.notebooks nb01, nb02 (the helpers of notebooks 01-02), and the size of notebook code cells."""
import json
from pathlib import Path

import nbformat
import pytest
import torch

from spd_ref.block import BlockMode
from spd_ref.notebooks import building_the_spd_block as nb02
from spd_ref.notebooks import communication_cost as nb01
from spd_ref.notebooks.building_the_spd_block import (block_output, block_pieces, random_llama,
                                                      wrong_spd_bias_on_every_rank, wrong_spd_residual_on_every_rank)
from spd_ref.notebooks.communication_cost import DecodeCostModel

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAX_CELL_LINES = 20  # DESIGN.md: a longer cell is logic that belongs in spd_ref
TOL = 1e-5


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=[False, True], ids=["no_bias", "bias"])
def model(request):
    return random_llama(bias=request.param, seed=3)


# ---- notebook 02 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_tp_by_hand_is_the_original_block(model, ids, n):
    p = block_pieces(model, ids, block=1, tp_degree=n)
    assert p.attn_partials.shape == (n, *p.x.shape)
    assert (block_output(p, BlockMode.TP) - p.output).abs().max() <= TOL
    # The notebook's hand-written sums (no biases there) are the same equations.
    if p.o_bias is None:
        y = p.attn_partials
        h = p.x + y.sum(0)
        assert (h + p.mlp_shards(p.norm2(h).expand_as(y)).sum(0) - p.output).abs().max() <= TOL


def test_spd_at_one_rank_is_exact_and_not_at_more(model, ids):
    p1 = block_pieces(model, ids, block=0, tp_degree=1)
    assert (block_output(p1, BlockMode.SPD) - p1.output).abs().max() <= TOL
    p4 = block_pieces(model, ids, block=0, tp_degree=4)
    assert (block_output(p4, BlockMode.SPD) - p4.output).abs().max() > 1e-4


@pytest.mark.parametrize("n", [2, 3, 4])
def test_residual_pitfall_is_spd_plus_n_minus_1_x(model, ids, n):
    p = block_pieces(model, ids, block=1, tp_degree=n)
    spd = block_output(p, BlockMode.SPD)
    assert (nb02._spd_with_pitfalls(p, False, False) - spd).abs().max() <= TOL  # flags off: SPD
    assert (wrong_spd_residual_on_every_rank(p) - spd - (n - 1) * p.x).abs().max() <= TOL


@pytest.mark.parametrize("n", [2, 4])
def test_bias_pitfall_is_spd_plus_n_minus_1_b(ids, n):
    p = block_pieces(random_llama(bias=True, seed=4), ids, block=0, tp_degree=n)
    extra = wrong_spd_bias_on_every_rank(p) - block_output(p, BlockMode.SPD)
    assert (extra - (n - 1) * p.o_bias).abs().max() <= TOL
    assert extra.abs().max() > 0.01  # the bias is large enough for the test to mean something


def test_pitfall_table_names_every_variant(ids):
    rows = nb02.pitfall_table(block_pieces(random_llama(bias=True), ids, block=1, tp_degree=4))
    assert [r["variant"].split()[0] for r in rows] == ["SPD", "naive", "X", "o_proj"]
    assert all(r["max_abs_off_by_n_minus_1"] <= TOL for r in rows[2:])
    assert rows[0]["rel_err_vs_tp"] < rows[2]["rel_err_vs_tp"]


def test_block_pieces_refuses_a_patched_model(ids):
    from spd_ref.hf import apply_tp

    with pytest.raises(RuntimeError, match="remove_tp"):
        block_pieces(apply_tp(random_llama(), 2), ids, block=0, tp_degree=2)


def test_exactness_checks_hold_and_leave_the_model_unpatched(model, ids):
    checks = nb02.exactness_checks(model, ids, tp_degrees=(2, 4))
    assert len(checks) == 3 and all(c["exact"] for c in checks)
    assert not hasattr(model.model.layers[0], "block_mode")


def test_block_errors(model, ids):
    assert all(e["spd_rel_err"] <= TOL for e in nb02.block_errors(model, ids, tp_degree=1))
    errors = nb02.block_errors(model, ids, tp_degree=4)
    assert [e["block"] for e in errors] == [0, 1]
    assert all(e["spd_rel_err"] > 1e-4 for e in errors)
    assert nb02.plot_block_errors(errors).data[:4] == b"\x89PNG"


# ---- notebook 01 ---------------------------------------------------------------------------------
def test_reference_file_matches_resources_table():
    doc = json.loads(nb01.REFERENCE.read_text())
    assert "2026-11-26" in doc["provenance"]["summary"] and "H100" in doc["provenance"]["summary"]
    table = {(r["shape"], r["tp"], r["p2p"], r["spd_ratio"]): r
             for r in nb01.ceiling_table(doc["rows"])}
    spd = table[("llama2-7b", 4, True, 1.0)]
    assert spd["saving"] == pytest.approx(0.178, abs=0.002) and spd["comm_share"] == pytest.approx(0.37, abs=0.01)
    assert spd["ceiling"] == pytest.approx(spd["comm_share"] / 2)  # SPD on every block: half the syncs
    assert table[("llama2-7b", 4, True, 0.0)]["per_sync_us"] == pytest.approx((3.16 - 2.00) / 64 * 1e3)


def test_load_recorded_prefers_gpu_rows(tmp_path):
    rows, source = nb01.load_recorded(tmp_path)
    assert "RESOURCES.md" in source and rows
    gpu = dict(kind="decode", gpu="NVIDIA H100", shape="x", tp=2, p2p=True, batch=1, ctx=8, tag="t")
    experiment = dict(gpu, tag="tune-default", batch=2)  # experiments are not the record's rows
    (tmp_path / "gpu").mkdir()
    lines = (json.dumps(r) + "\n" for r in (gpu, dict(gpu, gpu="cpu"), experiment))
    (tmp_path / "gpu" / "a.jsonl").write_text("".join(lines))
    rows, source = nb01.load_recorded(tmp_path)
    assert rows == [gpu] and "gpu/a.jsonl" in source


def test_cost_model_fit_and_prediction():
    rows = [dict(kind="decode", shape="s", batch=1, tp=tp, no_comm=tp > 1, layers=10, hidden=1024,
                 ms_median=1.0 + 4.0 / tp) for tp in (1, 2, 4)]
    peer = dict(rows[0], impl="transformers_tp_plan", ms_median=99.0)  # not ours: must not enter the fit
    model = nb01.fit_cost_model(rows + [peer], shape="s")
    assert (model.serial_ms, model.parallel_ms) == (pytest.approx(1.0), pytest.approx(4.0))
    p = model.predict(tp=4, busbw_gbps=100, alpha_us=20, spd_ratio=0.5)
    per_sync = 0.020 + 1.5 * 1024 * 2 / 100e6  # alpha + 2(N-1)/N bytes / busbw, in ms
    assert p["baseline_ms"] == pytest.approx(2.0 + 20 * per_sync)
    assert p["spd_ms"] == pytest.approx(2.0 + 15 * per_sync)
    assert p["saving"] == pytest.approx(p["comm_share"] * 5 / 20)  # the model meets its ceiling
    with pytest.raises(ValueError, match="tp >= 2"):
        model.predict(1, 100, 20, 1.0)
    with pytest.raises(ValueError, match="2 or more TP degrees"):
        nb01.fit_cost_model(rows[:1], shape="s")


def test_print_fits(capsys):
    rows = [dict(kind="allreduce", tp=4, p2p=False, bytes=b, ms_median=0.020 + b * 1.5 / 25e6) for b in (8192, 1 << 20)]
    rows += [dict(kind="allreduce", allreduce="oneshot", tp=2, p2p=True, bytes=b, ms_median=0.007 + b / 125e6)
             for b in (8192, 1 << 20)]
    nb01.print_fits(rows)  # one line per kind; rows without a kind are NCCL's
    assert capsys.readouterr().out.strip().splitlines() == [
        "TP 4, P2P off, nccl: alpha = 20.0 us, bus bandwidth = 25.00 GB/s (2 message sizes)",
        "TP 2, P2P on, oneshot: alpha = 7.0 us, bus bandwidth = 125.00 GB/s (2 message sizes)"]


def test_cost_figures_and_widget():
    model = DecodeCostModel("s", 10, 1024, 1, 1.0, 4.0)
    assert nb01.plot_cost_model(model, 20).data[:4] == b"\x89PNG"
    widget = nb01.cost_explorer(model, 20)
    assert [c.description for c in widget.children[:-1]] == ["TP degree", "bus GB/s", "alpha (us)", "batch",
                                                               "SPD ratio"]
    bus = widget.children[1]  # the default log step (0.1) snapped 300 to 10^2.5 and showed "316"
    assert (bus.value, bus.step, bus.readout_format) == (300, 0.001, ".0f")


# ---- the notebooks themselves -------------------------------------------------------------------
def long_cells(path: Path, limit: int = MAX_CELL_LINES) -> list[str]:
    """Code cells of a notebook longer than `limit` lines: '#INDEX (LINES lines)'."""
    nb = nbformat.read(path, as_version=4)
    return [f"#{i} ({len(c.source.splitlines())} lines)" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > limit]


def test_long_cell_check_can_fail(tmp_path):
    path = tmp_path / "long.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1\n" * 21)]), path)
    assert long_cells(path) == ["#0 (21 lines)"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_code_cells_are_short(path):
    assert not long_cells(path), (f"{path.name}: code cells over {MAX_CELL_LINES} lines {long_cells(path)}; "
                                  "move that logic into spd_ref (DESIGN.md, Notebooks)")
