"""The main job's pieces that the Ray tests don't cover: the comparison table and argument errors."""

from pipelines import demo


def test_comparison_table_lists_every_head_and_metric():
    rows = {"glccl": {"test/t2v/R@1": 31.0, "test/t2v/R@5": 60.0, "test/v2t/R@1": 29.5},
            "meanp": {"test/t2v/R@1": 22.0}}
    table = demo.format_table(rows, {"glccl": 250.0, "meanp": 200.0})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["head", "t2v/R@1", "t2v/R@5"]
    assert lines[2].split()[:3] == ["glccl", "31.0", "60.0"] and lines[2].endswith("250s")
    assert lines[3].split()[:2] == ["meanp", "22.0"] and "nan" in lines[3]  # missing metrics are shown, not invented


def test_unknown_head_and_bad_override_are_rejected(capsys):
    assert demo.main(["--heads", "glccl,nope"]) == 2
    assert "unknown head(s) ['nope']" in capsys.readouterr().err
    assert demo.main(["train.epochs=zero"]) == 2
    assert "train.epochs" in capsys.readouterr().err
