"""The scale study's summary (spd_ref.evaluation.scale) on synthetic sweep rows written to disk."""
import json

from spd_ref.evaluation.scale import load_study, markdown, plot_tolerance, summary


def write_model(folder, name, params, classes, drops):
    """Sweep rows of one model at TP 2: sensitivity classes per block and (ratio -> drop, low, high)."""
    rows = [{"model": name, "params": params, "tp": 2, "kind": "sensitivity", "block": l, "class": c}
            for l, c in enumerate(classes)]
    for ratio, (drop, low, high) in drops.items():
        rows.append({"model": name, "tp": 2, "strategy": "zs", "spd_ratio": ratio, "task": "t", "metric": "acc",
                     "value": 0.7 - drop, "drop": drop, "drop_ci95": [low, high], "drop_n_items": 1250,
                     "score_s": 60.0})
    (folder / name).mkdir()
    (folder / name / "sweep_tp2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_shares_intervals_and_figure(tmp_path):
    write_model(tmp_path, "small", 1e8, ["in-sensitive", "sensitive", "extremely sensitive", "sensitive"],
                {0.0: (0, 0, 0), 0.5: (0.03, 0.02, 0.04)})
    write_model(tmp_path, "large", 1e9, ["in-sensitive", "in-sensitive", "in-sensitive", "sensitive"],
                {0.0: (0, 0, 0), 0.5: (0.004, -0.002, 0.009), 1.0: (0.02, 0.012, 0.03)})
    (tmp_path / "empty").mkdir()  # a model folder without rows yet is skipped
    lines = {s["model"]: s for s in summary(load_study(tmp_path))}
    assert set(lines) == {"small", "large"}
    assert lines["small"]["insensitive"] == 0.25 and lines["large"]["insensitive"] == 0.75
    assert lines["small"]["largest_within_1pt"] == 0.0 and lines["large"]["largest_within_1pt"] == 0.5
    text = markdown(list(lines.values()))
    assert "| large | 1000 M | 2 | zs | 75% of 4 | 0.50 | 0.50: 0.4 [-0.2, 0.9]; 1.00: 2.0 [1.2, 3.0] |" in text
    assert plot_tolerance(list(lines.values()), tmp_path / "t.png").stat().st_size > 10_000


def test_each_strategy_gets_its_line_and_a_bad_folder_is_refused(tmp_path, capsys):
    import pytest

    from spd_ref.evaluation.scale import main

    write_model(tmp_path, "m", 1e8, ["in-sensitive", "sensitive"], {0.0: (0, 0, 0), 0.5: (0.03, 0.02, 0.04)})
    rows_file = tmp_path / "m" / "sweep_tp2.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    b2b = [dict(r, strategy="b2b", drop=r["drop"] / 3, drop_ci95=[r["drop_ci95"][0] / 3, r["drop_ci95"][1] / 3])
           for r in rows if r.get("strategy") == "zs"]
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in b2b + rows))  # b2b rows first on disk
    lines = summary(load_study(tmp_path))
    assert [s["strategy"] for s in lines] == ["zs", "b2b"]
    assert abs(lines[1]["drops"][0.5].drop - 0.01) < 1e-12 and lines[0]["drops"][0.5].drop == 0.03
    assert main([str(tmp_path)]) == 0 and "| m | 100 M | 2 | b2b | 50% of 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "m")])  # a model folder, not the study folder
    assert stop.value.code == 2 and "holds no model folder with sweep rows" in capsys.readouterr().err


def test_resolution_projects_each_setting_onto_all_the_material():
    from spd_ref.evaluation.scale import resolution
    from spd_ref.evaluation.statistics import paired_drop

    base = {"a": [1.0, 0.0] * 50, "b": [1.0, 1.0, 0.0, 1.0] * 10}
    spd = {"a": [0.0, 0.0] + [1.0, 0.0] * 49, "b": [1.0, 0.0, 0.0, 1.0] * 10}
    d = paired_drop(base, spd)

    def rows(ratio, items):
        return [{"tp": 2, "strategy": "zs", "spd_ratio": ratio, "task": t, "metric": "acc", "items": v,
                 "drop": d.drop if ratio else 0.0, "drop_ci95": [d.low, d.high] if ratio else [0.0, 0.0],
                 "drop_n_items": 140} for t, v in items.items()]

    table = resolution({"m": rows(0.0, base) + rows(0.5, spd)}, {"a": 400, "b": 40})
    cells = [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]
    assert cells[:4] == ["m", "2", "zs", "0.50"] and len(table.splitlines()) == 3  # ratio 0 is no line
    now, projected = float(cells[5]), float(cells[6])
    assert projected < now  # task a at 4 x its items; b, used up, keeps its share
    more = resolution({"m": rows(0.0, base) + rows(0.5, spd)}, {"a": 10 ** 9, "b": 10 ** 9})
    assert float(more.splitlines()[-1].strip("|").split("|")[6]) < 0.01
