"""The README tables of the real-weights LLM-bridge runs are generated from
the committed JSON (``python -m benchmarks.make_bridge_real_table``), and the
JSON says what was run, where and on which data."""

import json
import os

from benchmarks.make_bridge_real_table import (
    END,
    GRADIENTS,
    RESULTS,
    START,
    render,
    update,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_table_is_the_rendering_of_the_json():
    with open(os.path.join(ROOT, "README.md")) as fin:
        readme = fin.read()
    assert START in readme and END in readme, "README.md lacks the bridge-real markers"
    block = readme.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == render().strip(), (
        "README.md is stale: run python -m benchmarks.make_bridge_real_table "
        "--update README.md"
    )


def test_results_record_machine_commit_commands_and_equal_sizes():
    with open(RESULTS) as fin:
        report = json.load(fin)
    assert report["machine"]["cpus"] and report["commit"] and report["date"]
    bridges = report["bridges"]
    assert set(bridges) == {"dense", "moe_adapter", "soft_moa"}
    totals = [row["total"] for row in bridges.values()]
    assert (max(totals) - min(totals)) / max(totals) < 1e-3  # equal total size
    assert bridges["moe_adapter"]["active"] < bridges["moe_adapter"]["total"]
    for name, row in bridges.items():
        assert f"hparams/bridges_tiny/{name}.yaml" in row["command"]
        assert row["test_WER"] is not None and row["test_accuracy_sound"] is not None
    with open(GRADIENTS) as fin:
        gradients = json.load(fin)
    assert {"dense", "moe_adapter"} <= set(gradients["bridges"])
    for name, entry in gradients["bridges"].items():
        steps = [p["step"] for p in entry["points"]]
        assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 2
        if name in ("dense", "moe_adapter"):  # several points of training
            assert len(steps) >= 3


def test_update_replaces_only_the_marked_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{START}\nold\n{END}\ntail\n")
    update(str(path), "new table")
    assert path.read_text() == f"head\n{START}\nnew table\n{END}\ntail\n"
