"""The demo's table of served scores."""
from mtrank.cli import demo


def test_table_ranks_the_fused_score_and_formats_it_readably():
    rows = [
        ("r1", "i1", {"click": 0.02266, "like": 0.004434, "score": 7.181e-09}),
        ("r2", "i2", {"click": 0.09161, "like": 0.02455, "score": 3.74e-06}),
        ("r3", "i3", {"click": 0.04565, "like": 0.008972, "score": 1.051e-07}),
        ("r4", "i4", {"click": 0.04, "like": 0.01, "score": 1.051e-07}),
    ]
    lines = demo.format_ranked_predictions(rows, "score").splitlines()
    assert lines[0].split() == ["request_id", "item_id", "click", "like", "score", "rank"]
    assert [line.split() for line in lines[1:]] == [
        ["r1", "i1", "0.0227", "0.0044", "7.18e-09", "4"],
        ["r2", "i2", "0.0916", "0.0245", "3.74e-06", "1"],
        # Equal scores share a rank.
        ["r3", "i3", "0.0457", "0.0090", "1.05e-07", "2"],
        ["r4", "i4", "0.0400", "0.0100", "1.05e-07", "2"],
    ]
    # Columns line up: every value starts where its header does.
    assert ([lines[1].index("0.0227"), lines[1].index("7.18e-09"), len(lines[1]) - 1]
            == [lines[0].index(name) for name in ("click", "score", "rank")])


def test_a_task_named_score_leaves_the_fused_score_its_own_column():
    rows = [("r1", "i1", {"score": 0.5, "fused_score": 0.25})]
    lines = demo.format_ranked_predictions(rows, "fused_score").splitlines()
    assert lines[0].split() == ["request_id", "item_id", "score", "fused_score", "rank"]
    assert lines[1].split() == ["r1", "i1", "0.5000", "2.50e-01", "1"]
