"""Each benchmark runs on tiny inputs (no timing is asserted: speed goals live in bench/, not in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import cpu_training, data_cache, end_to_end, head_only, inference, pipeline_overhead
from bench.common import Goal, Row
from components.training.heap import glibc


def test_data_cache_benchmark_runs(synthetic_root: Path) -> None:
    rows = data_cache.run(synthetic_root, size=16, epochs=2, batch_size=4)
    assert [row.unit for row in rows] == ["img/s"] * 3
    assert all(row.value > 0 and row.reference > 0 for row in rows)


def test_head_only_benchmark_runs(synthetic_root: Path) -> None:
    [row] = head_only.run(synthetic_root, backbone="tiny_cnn", weights="none", size=16, epochs=2, limit=8)
    assert row.value > 0 and row.reference > 0 and "val f1" in row.note


def test_inference_benchmark_runs(synthetic_root: Path) -> None:
    rows = inference.run(synthetic_root, size=32, limit=4, repeats=1)
    assert len(rows) == 3 and all(row.value > 0 and row.reference > 0 for row in rows)


def test_pipeline_overhead_benchmark_runs(synthetic_root: Path, monkeypatch) -> None:
    monkeypatch.setitem(pipeline_overhead.SPEC, "backbone", "tiny_cnn")
    monkeypatch.setitem(pipeline_overhead.SPEC, "epochs", 1)
    [row] = pipeline_overhead.run(synthetic_root, size=32, limit=6, repeats=1)
    assert row.value > 0 and row.reference > 0


@pytest.mark.slow  # a whole `odir full` in a process of its own, with its ephemeral Prefect server
def test_end_to_end_benchmark_measures_a_pipeline_run(tiny_data: Path, tiny_profile: Path) -> None:
    result = end_to_end.measure(str(tiny_profile), tiny_data)
    assert result["wall"] > result["span"] > result["inside"] > 0 and result["peak_mb"] > 0


def test_end_to_end_rows_come_from_the_median_run(tmp_path: Path, monkeypatch) -> None:
    runs = iter([
        {"wall": 30.0, "span": 10.0, "inside": 9.0, "peak_mb": 1500.0},  # 10% outside
        {"wall": 40.0, "span": 20.0, "inside": 10.0, "peak_mb": 1900.0},  # 50%
        {"wall": 25.0, "span": 10.0, "inside": 8.0, "peak_mb": 1700.0},  # 20%: the median
    ])  # fmt: skip
    monkeypatch.setattr(end_to_end, "measure", lambda profile, root: next(runs))
    share, wall, memory = end_to_end.run(tmp_path)
    assert "(20% outside)" in share.name and (share.value, share.reference) == (10.0, 8.0)
    assert (wall.value, wall.reference) == (25.0, 10.0) and memory.value == 1900.0


def test_cpu_training_benchmark_runs() -> None:
    rows = cpu_training.run(size=32, batch=2, backbone="tiny_cnn")
    assert [row.name.split(": ")[1] for row in rows][:3] == [
        "channels_last vs float32 contiguous",
        "bf16 autocast vs float32 contiguous",
        "bf16 + channels_last vs float32 contiguous",
    ]
    if glibc() is not None:
        assert rows[-1].name.endswith("freed memory kept vs glibc's default (224 px, channels_last)")
    assert all(row.value > 0 and row.reference > 0 and row.unit == "img/s" for row in rows)


def test_a_row_misses_its_goal_by_its_ratio_or_its_condition() -> None:
    assert not Row("fast", 10.0, 2.0, "s", Goal(">=", 5.0)).misses  # 5x: on the bound
    assert Row("slow", 9.0, 2.0, "s", Goal(">=", 5.0)).misses  # 4.5x
    assert Row("fast but different", 10.0, 1.0, "s", Goal(">=", 5.0), condition=False).misses
    assert not Row("informs", 1.0, 9.0, "MB").misses and Row("informs", 1.0, 9.0, "MB").verdict == ""
    share = Row("demo", 12.0, 10.0, "s", Goal("<=", 1.176), "15% outside")  # 17% outside
    assert share.misses and share.markdown().endswith("| <= 1.176x; 15% outside | **MISSES** |")
    assert "MISSES" in share.format()


def test_the_docs_get_the_table_between_the_markers_only(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nbefore\n{bench_main.BEGIN}\nold table\n{bench_main.END}\nafter\n")
    bench_main.write_docs(docs, "new table")
    assert docs.read_text() == f"# Benchmarks\n\nbefore\n{bench_main.BEGIN}\nnew table\n{bench_main.END}\nafter\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match=r"no .* block"):
        bench_main.write_docs(tmp_path / "plain.md", "new table")
