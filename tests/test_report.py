"""The one table printer and the compression report's summary."""

import types

import numpy as np

from hos_keras.report import CompressionReport, allocation_label, table


def test_table_aligns_and_formats():
    lines = table(
        ("layer", "channels", "ratio", "T"),
        [("conv1", 1234, "0.50", 0.123456), ("c2", np.int64(8), "0.25", None)],
    )
    assert lines == [
        "layer  channels  ratio       T",
        "------------------------------",
        "conv1     1,234   0.50  0.1235",
        "c2            8   0.25       -",
    ]


def _report(**changes):
    values = {
        "model_name": "m",
        "criterion": "k34",
        "allocation": "shapiro",
        "metrics": {
            "original": {"loss": 0.5, "accuracy": 0.9},
            "pruned": {"loss": 2.0, "accuracy": 0.1},
            "finetuned": {"loss": 0.6, "accuracy": 0.88},
        },
        "params": {"original": 1000, "slim": 400},
        "macs": {"original": 20000, "slim": 10000},
        "latency_ms": {"original": {1: 2.0}, "slim": {1: 1.0}},
        "file_bytes": {"original": 5000, "slim": None},
        "layers": [
            {"name": "c1", "channels": 8, "kept": 4, "ratio": 0.5, "statistic": 0.95}
        ],
        "pivots": [],
        "history": {},
    }
    values.update(changes)
    return CompressionReport(**values)


def test_summary_lines():
    lines = []
    _report().summary(print_fn=lines.append)
    assert lines[0] == "Compression of 'm': criterion=k34, allocation=shapiro"
    text = "\n".join(lines)
    params = next(line for line in lines if line.startswith("params"))
    assert params.split() == ["params", "1,000", "400", "2.50x"]
    macs = next(line for line in lines if line.startswith("MACs"))
    assert macs.split()[-1] == "2.00x"
    files = next(line for line in lines if line.startswith(".keras file"))
    assert files.split()[-2:] == ["-", "-"]  # no slim size, no ratio
    assert "right after pruning" in text and "after fine-tuning" in text
    stage = next(line for line in lines if line.startswith("after fine-tuning"))
    assert stage.split()[-2:] == ["0.8800", "0.6000"]
    layer = next(line for line in lines if line.startswith("c1 "))
    assert layer.split() == ["c1", "8", "4", "0.50", "0.9500"]  # T to 4 decimals
    assert "distillation" not in text  # a stage that did not run is not shown


def test_a_target_report_names_the_allocation_it_searched():
    plan = types.SimpleNamespace(allocation_config={"base": "shapiro"})
    report = _report(allocation="target", plan=plan)
    lines = []
    report.summary(print_fn=lines.append)
    assert (
        lines[0] == "Compression of 'm': criterion=k34, allocation=target over shapiro"
    )
    assert report.statistic_name() == "Shapiro-Wilk W"
    title = report.layers_figure().axes[0].get_title()
    assert "allocation target over shapiro" in title
    assert allocation_label("global", {"fraction": 0.3}) == "global"
