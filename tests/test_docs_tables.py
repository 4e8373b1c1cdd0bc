"""docs/benchmarks.md's tables are what benchmarks/tables.py makes of the committed results (no Ray, no torch)."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", os.path.join(ROOT, "benchmarks", "tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_tables_match_the_committed_results(tables):
    changed = tables.check(DOC)
    assert changed == [], f"docs/benchmarks.md is out of date in {changed}: run python benchmarks/tables.py"


def test_every_registered_table_is_in_the_doc(tables):
    with open(DOC) as f:
        text = f.read()
    for name in tables.TABLES:
        assert f"<!-- table: {name} -->" in text


def test_check_names_the_table_with_a_changed_figure(tables, tmp_path):
    with open(DOC) as f:
        text = f.read()
    # One figure of the MNIST ablation: the preset's robust AUBC.
    row = "| **λ = 0.5, k = 10, mix = random (the preset when this ran)** | **0.8308 ± 0.0150** | 0.8143 ± 0.0147 |"
    assert text.count(row) == 1
    copy = tmp_path / "benchmarks.md"
    copy.write_text(text.replace(row, row.replace("0.8143", "0.8144")))

    assert tables.check(str(copy)) == ["ablation_mnist"]
    assert tables.main(["--check", "--doc", str(copy)]) == 1
    # Writing restores the generated table, and then the copy checks clean and equals the doc.
    assert tables.write(str(copy)) == ["ablation_mnist"]
    assert tables.check(str(copy)) == []
    assert copy.read_text() == text


def test_unknown_or_unclosed_markers_are_errors(tables, tmp_path):
    with open(DOC) as f:
        text = f.read()
    copy = tmp_path / "benchmarks.md"
    copy.write_text(text.replace("<!-- table: train -->", "<!-- table: no_such_table -->"))
    with pytest.raises(ValueError, match="no_such_table"):
        tables.check(str(copy))
    assert tables.main(["--check", "--doc", str(copy)]) == 1

    opened = text.index("<!-- table: train -->")
    closed = text.index("<!-- /table -->", opened)
    copy.write_text(text[:closed] + text[closed + len("<!-- /table -->"):])
    with pytest.raises(ValueError, match="train"):
        tables.check(str(copy))


@pytest.mark.parametrize("name, field, column", [("imbalanced_fashion_mnist_50", "initial", "plan"),
                                                  ("imbalanced_fashion_mnist_50", "test_subset", "pool"),
                                                  ("imbalanced_fashion_mnist_10", "long_tail", None)])
def test_a_protocol_cell_written_same_is_checked_against_the_row_above(tables, monkeypatch, name, field, column):
    """'same' claims every field of the row above, 'same, <words>' all but the dataset and the fields <words>
    show: changing a claimed field is an error, changing a shown one only changes the cell."""
    real = tables.protocol

    def changed(res, protocol):
        p = real(res, protocol)
        return {**p, field: p[field] * 2} if protocol == name else p

    monkeypatch.setattr(tables, "protocol", changed)
    if column:
        with pytest.raises(ValueError, match=f"{name}'s {column} is written 'same' but differs in \\['{field}'\\]"):
            tables.select_protocols(tables.Results())
    else:
        assert f"| `{name}` | same, cut long-tailed to a head/tail ratio of 20 " in \
            tables.select_protocols(tables.Results())


def test_every_protocol_select_bench_defines_has_a_row(tables, monkeypatch):
    rows = dict(tables.PROTOCOL_ROWS)
    del rows["noisy_fashion_mnist"]
    monkeypatch.setattr(tables, "PROTOCOL_ROWS", rows)
    with pytest.raises(ValueError, match=r"defines \['noisy_fashion_mnist'\] without a row"):
        tables.select_protocols(tables.Results())


@pytest.mark.parametrize("dm2, best_std, verdict", [(0.70, 0.025, "| 2 of 3 | yes | yes | **met** |"),
                                                    (0.68, 0.045, "| 3 of 3 | no | yes | not met |"),
                                                    (0.695, 0.02, "| 2 of 3 | yes | no | not met |")])
def test_the_goal_row_says_above_random_and_within_one_std_of_the_best(tables, tmp_path, dm2, best_std, verdict):
    import json

    aubc = {"dm2": {"mean": dm2, "std": 0.01}, "random": {"mean": 0.69, "std": 0.02},
            "margin": {"mean": 0.72, "std": best_std}}
    (tmp_path / "select_fashion_mnist.json").write_text(json.dumps(
        {"aubc": aubc, "settings": {"preset": "fashion_mnist"}, "pool_subset": 10_000, "test_subset": 2_000,
         "seeds": [0, 1, 2]}))
    rows = tables.select_goal(tables.Results(str(tmp_path))).split("\n")[2:]
    assert len(rows) == 1 and rows[0].startswith("| `fashion_mnist` | 0.") and "| margin 0.7200 ± " in rows[0]
    assert rows[0].endswith(verdict)


def test_a_goal_row_from_a_partial_result_says_so(tables, tmp_path):
    import json

    aubc = {"dm2": {"mean": 0.70, "std": 0.01}, "random": {"mean": 0.69, "std": 0.02}}
    (tmp_path / "select_noisy_fashion_mnist_subset_partial.json").write_text(json.dumps(
        {"aubc": aubc, "settings": {"preset": "fashion_mnist"}, "pool_subset": 10_000, "test_subset": 2_000,
         "seeds": [0, 1, 2]}))
    rows = tables.select_goal(tables.Results(str(tmp_path))).split("\n")[2:]
    assert len(rows) == 1 and rows[0].startswith("| `noisy_fashion_mnist` (partial: 2 strategies) | 0.7000 ± ")


@pytest.mark.parametrize("spread, note", [(4, "(the preset)"), (None, "(the preset when this ran)")])
def test_dm2s_cell_names_the_settings_its_result_file_recorded(tables, tmp_path, spread, note):
    import json

    assert tables.dm2_settings("fashion_mnist")["spread"] == 4  # the case below that matches the preset
    aubc = {"dm2": {"mean": 0.70, "std": 0.01}, "random": {"mean": 0.69, "std": 0.02}}
    (tmp_path / "select_fashion_mnist.json").write_text(json.dumps(
        {"aubc": aubc, "settings": {"preset": "fashion_mnist"}, "pool_subset": 10_000, "test_subset": 2_000,
         "seeds": [0, 1, 2], "dm2_settings": {"lam": 0.8, "k": 10, "mix": "random", "spread": spread}}))
    rows = tables.select_goal(tables.Results(str(tmp_path))).split("\n")[2:]
    assert rows[0].startswith(f"| `fashion_mnist` | 0.7000 ± 0.0100 {note} |")
