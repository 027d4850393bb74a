"""pipeline.views.report: trade-off points, Pareto front, iso-AOP curves, live-run rows (hand-computed values)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipeline.data.datasets import DatasetConfig
from pipeline.views import legend, report


def test_pareto_front_hand_values():
    accuracy = [0.90, 0.80, 0.85, 0.70, 0.90]
    auc = [0.60, 0.50, 0.55, 0.50, 0.60]
    # 3 is dominated by 1 (same AUC, lower accuracy); 0 and 4 tie and are both optimal
    assert report.pareto_front(accuracy, auc).tolist() == [True, True, True, False, True]
    assert report.pareto_front([0.5], [0.5]).tolist() == [True]
    with pytest.raises(ValueError, match="equal length"):
        report.pareto_front([0.5, 0.6], [0.5])


def test_aop_iso_curve_is_accuracy_at_that_aop():
    curve = report.aop_iso_curve(0.5, [0.5, 0.6, 0.8])
    assert curve[0] == pytest.approx(0.5)  # 0.5 * (2 * 0.5)^2
    assert curve[1] == pytest.approx(0.72)  # 0.5 * 1.2^2
    assert math.isnan(curve[2])  # 0.5 * 1.6^2 = 1.28 > 1: not a reachable accuracy


def test_points_from_metrics_and_filters(fake_metrics):
    points = report.points_from_metrics("run-a", fake_metrics(cardinality=2.0))
    teacher, student = points
    assert (teacher.role, student.role) == ("teacher", "student")
    assert teacher.accuracy == 0.95 and teacher.auc == 0.60 and teacher.auc_ci95 == pytest.approx((0.58, 0.62))
    assert teacher.aop == pytest.approx(0.95 / 1.44)
    assert student.roc_fpr == (0.0, 0.001, 0.5, 1.0) and student.tpr_at_01pct == 0.01
    assert (teacher.dataset, teacher.generator, teacher.cardinality) == ("digits", "scratch", 2.0)
    other = report.points_from_metrics("run-b", fake_metrics(backend="sd-lora"))
    both = points + other
    assert report.filter_points(both, generators=["sd-lora"]) == other
    assert report.filter_points(both, cardinalities=[2.0]) == points
    assert report.filter_points(both) == both
    assert [(t.run_id, s.run_id) for t, s in report.run_pairs(both)] == [("run-a", "run-a"), ("run-b", "run-b")]


def test_front_line_and_table(fake_metrics):
    points = report.points_from_metrics("a", fake_metrics(teacher=(0.9, 0.6), student=(0.85, 0.5)))
    points += report.points_from_metrics("b", fake_metrics(teacher=(0.8, 0.7), student=(0.7, 0.55)))
    front = report.front_line(points)
    assert [(p.run_id, p.role) for p in front] == [("a", "student"), ("a", "teacher")]
    rows = report.points_table(points)
    assert [r["Pareto"] for r in rows] == [True, True, False, False]
    assert rows[0]["AOP"] == pytest.approx(0.9 / 1.44, abs=1e-4)


def test_collect_points_reads_finished_runs_only(project, fake_metrics, add_finished_run):
    done = add_finished_run(project, fake_metrics())
    add_finished_run(project, fake_metrics(), status="running")
    points = report.collect_points(project)
    assert {p.run_id for p in points} == {done}
    assert len(points) == 2
    project.registry().archive(done)  # archived: off the plot unless asked for
    assert report.collect_points(project) == []
    assert {p.run_id for p in report.collect_points(project, archived=True)} == {done}


def test_epoch_rows_and_throughput():
    events = [
        {"t": 1, "stage": "generate", "done": 5, "total": 10, "images_per_s": 3.0},
        {"t": 2, "stage": "generate", "done": 10, "total": 10, "images_per_s": 4.5},
        {"t": 3, "stage": "teacher", "done": 4, "total": 8, "epoch_end": 1, "epoch": 1, "loss": 2.0},
        {"t": 4, "stage": "teacher", "done": 6, "total": 8, "epoch": 2, "loss": 1.7},  # mid-epoch: not a row
        {"t": 5, "stage": "teacher", "done": 8, "total": 8, "epoch_end": 1, "epoch": 2, "loss": 1.5,
         "val_accuracy": 0.6},
        {"t": 6, "stage": "teacher", "done": 8, "total": 8, "epoch_end": 1, "epoch": 2, "loss": 1.4},  # resumed
        {"t": 7, "stage": "student", "done": 1, "total": 1, "epoch_end": 1, "epoch": 1, "loss": 0.3},
    ]
    rows = report.epoch_rows(events)
    assert rows["teacher"] == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.4}]
    assert rows["student"] == [{"epoch": 1, "loss": 0.3}]
    assert report.throughput(events) == 4.5
    assert report.throughput(events, "caption") is None


def test_dataset_of_a_store_comes_from_its_caption_run(project):
    from pipeline.caption import CaptionConfig, caption

    config = DatasetConfig(limit=20)
    caption(CaptionConfig(dataset=config), project)
    assert report.dataset_config_for_store(project, "digits") == config
    assert report.dataset_config_for_store(project, "other") is None
    assert config in report.known_datasets(project)
    record = project.registry().list(kind="caption")[0]
    assert report.run_class_names(project, record, 10) == [str(d) for d in range(10)]
    assert report.run_class_names(project, record, 3) == ["0", "1", "2"]  # store classes do not fit: indices


def test_run_summary_row(project, fake_metrics, add_finished_run):
    run_id = add_finished_run(project, fake_metrics())
    row = report.run_summary(project.registry().get(run_id))
    assert row["run"] == run_id and row["status"] == "done" and row["teacher acc"] == 0.95
    assert np.isclose(row["teacher acc"], 0.95)


def test_generation_rate_falls_back_to_the_generation_runs(project):
    from pipeline.core.runs import Link

    registry = project.registry()
    rounds = [registry.create("generate", {}) for _ in range(2)]
    for run, rate in zip(rounds, (2.0, 4.0)):
        registry.report(run.id, images_per_s=rate)
    experiment = registry.create("experiment", {}, links=[Link(f"synthetic round {k}", "run", r.id)
                                                          for k, r in enumerate(rounds)])
    assert report.generation_rate(project, experiment) == 3.0
    assert report.generation_rate(project, experiment, [{"stage": "generate", "images_per_s": 9.0}]) == 9.0
    assert report.generation_rate(project, registry.create("experiment", {})) is None


def test_other_methods_are_points_on_the_plane_with_their_intervals(fake_metrics):
    """Issue 11: every transfer method of a run is a point (role = its label), drawn with its AUC interval."""
    from studio import figures

    metrics = fake_metrics()
    metrics["methods"] = {"am": {**fake_metrics()["student"], "accuracy": 0.7},
                          "dp-sgd ε=1": {**fake_metrics()["teacher"], "accuracy": 0.6, "epsilon": 0.98}}
    points = report.points_from_metrics("run-a", metrics)
    assert [p.role for p in points] == ["teacher", "student", "am", "dp-sgd ε=1"]
    assert points[2].accuracy == 0.7 and points[3].auc_ci95 == pytest.approx((0.58, 0.62))
    figure = figures.tradeoff_figure(points)
    traces = {t.name: t for t in figure.data}
    dp, am = legend.model_name("dp-sgd ε=1"), legend.model_name("am")
    assert {legend.model_name("teacher"), legend.model_name("student"), am, dp} <= set(traces)
    assert traces[dp].marker.symbol == "x" and traces[am].marker.symbol == "square"
    assert list(traces[am].error_x.array) == pytest.approx([0.02]) and traces[am].error_x.arrayminus[0] > 0
    assert [(t.role, s.role) for t, s in report.run_pairs(points)] == [("teacher", "student")]


# -- issue 12: trade-offs for stakeholders ---------------------------------------------------------------------
def test_axis_ranges_zoom_to_the_data_with_padding(fake_metrics):
    points = report.points_from_metrics("a", fake_metrics(teacher=(0.95, 0.60), student=(0.90, 0.52)))
    # AUCs with their intervals span 0.50 .. 0.62 (0.12), accuracies 0.90 .. 0.95 (0.05); 15% padding
    ranges = report.axis_ranges(points)
    assert ranges.auc == pytest.approx((0.50 - 0.018, 0.62 + 0.018))
    assert ranges.accuracy == pytest.approx((0.90 - 0.0075, 0.95 + 0.0075))
    assert report.axis_ranges(points, zoom=False) == report.FIXED_RANGES == report.AxisRanges((0, 1), (0, 1.02))
    assert report.axis_ranges([]) == report.FIXED_RANGES
    # one point: at least min_span wide, centred; never outside 0..1 (1.02 for accuracy)
    one = [replace(p, auc_ci95=None) for p in report.points_from_metrics("b", fake_metrics(teacher=(1.0, 0.5), student=(1.0, 0.5)))]
    ranges = report.axis_ranges(one, padding=0.5, min_span=0.02)
    assert ranges.auc == pytest.approx((0.5 - 0.02, 0.5 + 0.02))
    assert ranges.accuracy == pytest.approx((0.98, 1.02))


def test_roc_resolution_is_one_over_the_audit_counts(fake_metrics):
    points = report.points_from_metrics("a", fake_metrics())  # 10 members, 10 non-members
    assert report.roc_resolution(points) == (0.1, 0.1)
    metrics = fake_metrics()
    for role in ("teacher", "student"):
        del metrics[role]["mia"]["n_members"], metrics[role]["mia"]["n_nonmembers"]
    # counts not recorded: the smallest non-zero rate on the curves
    assert report.roc_resolution(report.points_from_metrics("a", metrics)) == (0.001, 0.01)
    assert report.roc_resolution([]) == (1e-3, 1e-3)


def test_points_table_says_na_below_the_fpr_floor_and_shows_epsilon(fake_metrics):
    metrics = fake_metrics()
    metrics["teacher"]["mia"].update(n_nonmembers=1000, mia_mode="transfer", attack="rmia")
    metrics["methods"] = {"dp-sgd ε=8": {**fake_metrics()["teacher"], "epsilon": 7.996}}
    rows = report.points_table(report.points_from_metrics("a", metrics))
    teacher, student, dp = rows
    assert teacher["TPR@1%FPR"] == "0.0500" and teacher["TPR@0.1%FPR"] == "0.0100"  # 1000 non-members
    assert student["TPR@1%FPR"] == "n/a" and student["model"] == "student on synthetic data (GKD)"  # 10: floor 10% FPR
    assert (teacher["audit mode"], teacher["attack"]) == ("transfer", "rmia")
    assert teacher["AUC 95% CI"] == "[0.580, 0.620]" and teacher["formal ε"] == "none" and dp["formal ε"] == "8.00"
    assert teacher["empirical ε"] == "n/a"  # an audit from before empirical ε was recorded
    assert report.tpr_text(float("nan"), 0.01, 0.001) == "n/a"


def test_tradeoff_figure_zooms_and_gives_each_method_its_marker(fake_metrics):
    from studio import figures

    metrics = fake_metrics(teacher=(0.95, 0.60), student=(0.90, 0.52))
    metrics["methods"] = {label: {**fake_metrics()["student"], "epsilon": eps}
                          for label, eps in (("dp-sgd ε=1", 1.0), ("dp-sgd ε=8", 8.0), ("gkd+bss", None))}
    points = report.points_from_metrics("a", metrics)
    zoomed, fixed = figures.tradeoff_figure(points), figures.tradeoff_figure(points, zoom=False)
    assert list(zoomed.layout.xaxis.range) == pytest.approx(report.axis_ranges(points).auc)
    assert list(zoomed.layout.yaxis.range) == pytest.approx(report.axis_ranges(points).accuracy)
    assert list(fixed.layout.xaxis.range) == [0, 1] and list(fixed.layout.yaxis.range) == [0, 1.02]
    traces = {t.name: t for t in zoomed.data if t.mode == "markers"}
    keys = ("teacher", "student", "dp-sgd ε=1", "dp-sgd ε=8", "gkd+bss")
    assert set(traces) == {legend.model_name(k) for k in keys}
    markers = {(t.marker.symbol, t.marker.color) for t in traces.values()}
    assert len(markers) == 5  # each its own marker, though both DP runs are x's
    one, eight = traces[legend.model_name("dp-sgd ε=1")], traces[legend.model_name("dp-sgd ε=8")]
    assert one.marker.symbol == eight.marker.symbol == "x"
    assert all(t.showlegend is not False for t in traces.values())


def test_roc_axes_start_at_the_audit_resolution(fake_metrics):
    from studio import figures

    metrics = fake_metrics()
    metrics["teacher"]["mia"]["n_nonmembers"] = metrics["student"]["mia"]["n_nonmembers"] = 109
    roc = figures.roc_figure(report.points_from_metrics("a", metrics))
    lo = roc.layout.xaxis.range[0]
    assert math.log10(1 / 109) - 0.1 < lo < math.log10(1 / 109)  # at 1/109, not five decades below
    assert roc.layout.yaxis.range[0] == pytest.approx(math.log10(0.1) - 0.05)  # 10 members
    # 0.1% FPR is below what 109 non-members resolve: the 1% FPR is marked instead
    assert [s.x0 for s in roc.layout.shapes] == [0.01]


# -- issue 25 item 5: one name in words and one colour per model, on every plot ----------------------------------
def _every_method(fake_metrics) -> dict:
    metrics = fake_metrics(teacher=(0.95, 0.60), student=(0.90, 0.52))
    metrics["methods"] = {"am": {**fake_metrics()["student"], "accuracy": 0.7},
                          "gkd+bss": {**fake_metrics()["student"], "accuracy": 0.91},
                          "dp-sgd ε=8": {**fake_metrics()["teacher"], "accuracy": 0.6, "epsilon": 7.99}}
    return metrics


def test_every_plot_gives_a_model_the_same_name_and_colour(fake_metrics):
    """The teacher was blue on the trade-off plane and red on the ROC plot; the AM student was 'am' in both."""
    from studio import figures

    points = report.points_from_metrics("a", _every_method(fake_metrics))
    plane = {t.name: t.marker.color for t in figures.tradeoff_figure(points).data if t.mode == "markers"}
    roc = {t.name.split(" (AUC")[0]: t.line.color for t in figures.roc_figure(points).data
           if t.mode == "lines" and "coin flip" not in t.name}
    bars = {t.name: t.marker.color for t in figures.per_class_figure(points, ["0", "1", "2"]).data}
    names = ["teacher (real data)", "student on synthetic data (GKD)", "data-free student (activation maximisation)",
             "student on synthetic data + boundary samples (GKD+BSS)", "DP-SGD classifier on real data (ε=8)"]
    assert list(plane) == list(roc) == list(bars) == names
    assert plane == roc == bars
    assert len(set(plane.values())) == len(names)
    assert plane["teacher (real data)"] == legend.look("teacher").color


def test_legend_looks_depend_on_the_key_alone():
    """A model looks the same whatever else is drawn: dp-sgd at the product's ε get a shade each (darker: a
    smaller ε), a method this module does not know keeps its label and a stable colour."""
    shades = [legend.look(f"dp-sgd ε={e}") for e in (1, 4, 8, 10)]
    assert len({s.color for s in shades}) == 4 and {s.symbol for s in shades} == {"x"}
    assert legend.look("dp-generator ε=4").name == "student of a DP generator (ε=4)"
    assert legend.look("new-method").name == "new-method" and legend.look("new-method") == legend.look("new-method")
    assert legend.listing(["A"]) == "the A" and legend.listing(["A", "B", "C"]) == "the A, the B and the C"


def test_plots_say_that_an_auc_of_one_half_is_a_coin_flip(fake_metrics):
    from studio import figures

    points = report.points_from_metrics("a", fake_metrics(teacher=(0.95, 0.60), student=(0.90, 0.49)))
    plane = figures.tradeoff_figure(points)
    assert [a.text for a in plane.layout.annotations if "0.5" in a.text] == ["AUC 0.5 = coin flip"]
    assert "0.5 = a coin flip" in plane.layout.xaxis.title.text
    assert figures.roc_figure(points).data[0].name == "AUC 0.5 = coin flip"


def test_page_table_has_the_columns_that_differ_and_text_cells(fake_metrics):
    points = report.points_from_metrics("a", _every_method(fake_metrics))
    rows = report.page_table(points)
    assert list(rows[0]) == ["model", "accuracy", "MIA AUC", "AUC 95% CI", "audit", "TPR@1%FPR", "AOP", "formal ε",
                             "empirical ε", "Pareto front"]  # one run, dataset, generator, cardinality, attack
    assert rows[2]["model"] == "data-free student (activation maximisation)" and rows[0]["accuracy"] == "0.9500"
    assert all(isinstance(v, str) for r in rows for v in r.values())
    other = report.points_from_metrics("b", fake_metrics(cardinality=2.0))
    assert list(report.page_table(points + other)[0])[:3] == ["model", "run", "cardinality"]
