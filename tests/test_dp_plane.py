"""Issue 24 item 4-5: DP runs on the plane (formal and empirical ε on every point), the report's wording,
compare-methods' DP-generator runs beside DP-SGD at the same ε, and the DP benchmark's smoke test."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from pipeline.views import report, stakeholder
from pipeline.views.legend import GLOSSARY, model_name

DPG, DP4, GKD = (model_name(k) for k in ("dp-generator ε=4", "dp-sgd ε=4", "student"))  # the models in words


def _dp_run(fake_metrics, student_formal=None) -> dict:
    """A DP run's metrics.json by hand: a DP-generator student (ε = 4 target, 3.98 spent) and the DP-SGD
    classifier at ε = 4 beside it; ``student_formal``: what the audit recorded (None: a run from before the
    student carried its guarantee into the audit)."""
    metrics = fake_metrics(teacher=(0.95, 0.62), student=(0.80, 0.51))
    metrics["teacher"]["mia"]["empirical_epsilon"] = 0.8
    metrics["student"]["mia"]["empirical_epsilon"] = 0.12
    metrics["student"]["formal_epsilon"] = student_formal
    dp_sgd = fake_metrics(teacher=(0.60, 0.50))["teacher"]
    dp_sgd["mia"]["empirical_epsilon"] = 0.05
    metrics["methods"] = {"dp-sgd ε=4": {**dp_sgd, "formal_epsilon": 3.97, "epsilon": 3.97, "method": "dp-sgd",
                                          "reads_real_training_images": True}}
    generator = {"part": "generator", "epsilon": 3.98, "delta": 1e-4, "accountant": "rdp", "noise_multiplier": 1.1,
                 "sample_rate": 0.1, "steps": 30, "max_grad_norm": 1.0, "target_epsilon": 4.0}
    metrics["privacy"] = {"parts": {"generator": generator},
                          "student": {"epsilon": 3.98, "delta": 1e-4, "accountant": "rdp", "parts": ["generator"],
                                      "labels": "class"}}
    return metrics


@pytest.mark.parametrize("recorded", [3.98, None])
def test_a_dp_runs_points_carry_formal_and_empirical_epsilon(fake_metrics, recorded):
    teacher, student, dp_sgd = report.points_from_metrics("dp-run", _dp_run(fake_metrics, recorded))
    assert (student.epsilon, student.empirical_epsilon, student.dp_generator) == (3.98, 0.12, 4.0)
    assert student.name == DPG == "student of a DP generator (ε=4)" and student.series == "dp-generator ε=4"
    assert (teacher.epsilon, teacher.dp_generator, teacher.name) == (None, None, "teacher (real data)")
    assert dp_sgd.epsilon == 3.97 and dp_sgd.name == DP4
    rows = {r["model"]: r for r in report.points_table([teacher, student, dp_sgd])}
    assert (rows[DPG]["formal ε"], rows[DPG]["empirical ε"]) == ("3.98", "0.12")
    assert (rows["teacher (real data)"]["formal ε"], rows["teacher (real data)"]["empirical ε"]) == ("none", "0.80")
    assert rows[DP4]["formal ε"] == "3.97"
    # a run without DP: its student stays the GKD student, without a guarantee
    plain = report.points_from_metrics("plain", fake_metrics())[1]
    assert (plain.name, plain.epsilon, plain.dp_generator) == (GKD, None, None)


def test_the_plane_labels_every_point_with_its_epsilons(fake_metrics):
    points = report.points_from_metrics("dp-run", _dp_run(fake_metrics)) + \
        report.points_from_metrics("plain", fake_metrics())
    figure = stakeholder.tradeoff_figure(points)
    markers = {t.name: t for t in figure.data if t.mode == "markers"}
    assert {"teacher (real data)", GKD, DPG, DP4} <= set(markers)
    assert markers[DPG].marker.symbol == "diamond-open"
    labels = next(t for t in figure.data if t.mode == "text")
    assert labels.name == "ε: formal · empirical" and len(labels.text) == len(points) == 5
    assert {"ε 3.98 · emp. 0.12", "ε none · emp. 0.80", "ε 3.97 · emp. 0.05", "ε none · emp. n/a"} <= set(labels.text)
    assert "formal ε 3.98 · empirical ε 0.12 (attack's lower bound)" in markers[DPG].text[0]
    assert not [t for t in stakeholder.tradeoff_figure(points, epsilon_labels=False).data if t.mode == "text"]


def test_the_report_says_which_figure_is_a_guarantee(fake_metrics):
    points = report.points_from_metrics("dp-run", _dp_run(fake_metrics))
    found = stakeholder.conclusions(points)
    text = " ".join(found)
    assert found[0].startswith(f"The {DPG}, which never saw a real training image, keeps")
    assert ("formal ε = 3.98 is a guarantee for everything that reached it. The run's teacher, trained on the real "
            "images, is shown for reference; it is not covered by that guarantee.") in text
    assert f"The {DP4} gives up more accuracy than the {DPG}: accuracy 0.600 against 0.800" in text
    assert text.count("gives up") == 1  # the DP-generator student is not compared with itself
    assert (f"Formal ε, a guarantee proven by differential privacy: the {DPG} has ε = 3.98 and the {DP4} has "
            "ε = 3.97. No guarantee for the teacher (real data).") in found
    assert any(f.startswith("Empirical ε is an attack's lower bound, not a guarantee") for f in found)
    teacher = next(p for p in points if p.role == "teacher")
    dp_teacher = stakeholder.dp_generator_finding(points[1], replace(teacher, epsilon=2.5))
    assert dp_teacher.endswith("Its labels came from a teacher trained with DP-SGD (formal ε = 2.50), composed into "
                               "that guarantee by the accountant.")
    assert any(term == "DP generator" for term, _ in GLOSSARY)
    setup = stakeholder.run_setup("dp-run", _dp_run(fake_metrics), points)
    assert setup.generator == ("scratch, with differential privacy (DP-SGD, ε = 3.98, δ = 0.0001; prompted with class "
                               "names only), trained on the members only")
    assert DPG in setup.models


def test_the_dp_student_and_a_dp_teacher_carry_their_guarantee_into_the_audit(tiny_config, project):
    from pipeline.audit import AuditConfig
    from pipeline.experiment import _Tested, audit_subject, formal_guarantee

    composed = {"epsilon": 3.98, "delta": 1e-4, "accountant": "rdp", "parts": ["generator"], "labels": "class"}
    assert formal_guarantee({"privacy": composed}) == (3.98, 1e-4)
    assert formal_guarantee({"epsilon": 3.97, "delta": 2e-4}) == (3.97, 2e-4)
    assert formal_guarantee({"privacy": None, "seconds": 3}) == (None, None)
    net = torch.nn.Linear(2, 2)
    tested = [_Tested("teacher", net, tiny_config.teacher, "", {"accuracy": 0.9},
                      {"privacy": {"part": "teacher", "epsilon": 2.0, "delta": 1e-4}}),
              _Tested("student", net, tiny_config.distill.student, "", {"accuracy": 0.8}, {"privacy": composed}),
              _Tested("dp-sgd ε=4", net, tiny_config.distill.student, "", {"accuracy": 0.6},
                      {"epsilon": 3.97, "delta": 1e-4}, ("dp-sgd", {"epsilon": 4.0}))]
    audit = AuditConfig(modes=("transfer",), method_modes=("transfer",))
    subject = audit_subject(tiny_config, audit, project, None, tested, None)
    assert [(m.name, m.epsilon, m.delta) for m in subject.models] == [
        ("teacher", 2.0, 1e-4), ("student", 3.98, 1e-4), ("dp-sgd ε=4", 3.97, 1e-4)]


# -- compare-methods ---------------------------------------------------------------------------------------------
def test_compare_methods_parses_the_epsilon_list():
    from pipeline.comparison import DP_GENERATOR_EPSILONS, parse_epsilons

    assert parse_epsilons("1,4,10") == DP_GENERATOR_EPSILONS == (1.0, 4.0, 10.0)
    assert parse_epsilons(" 0.5 , 8") == (0.5, 8.0)
    assert parse_epsilons("none") == parse_epsilons("") == parse_epsilons(None) == ()
    for bad, why in (("1,x", "not a number"), ("0", "positive"), ("nan", "positive"), ("4,4", "twice")):
        with pytest.raises(ValueError, match=why):
            parse_epsilons(bad)


def test_compare_methods_plans_a_dp_generator_run_beside_dp_sgd_at_each_epsilon(tiny_config):
    from pipeline.cli.stages import _methods
    from pipeline.comparison import plan_comparison

    config = replace(tiny_config, methods=_methods("am,dp-sgd,dp-sgd@8", (1.0, 4.0, 10.0)))
    plan = plan_comparison(config, (1.0, 4.0, 10.0), members=120)
    assert [p.label for p in plan] == ["methods", "dp generator ε=1", "dp generator ε=4", "dp generator ε=10"]
    methods_run = plan[0].config
    assert not methods_run.private and [n for n, _ in methods_run.methods] == ["am", "dp-sgd"]
    assert methods_run.methods[1][1]["epsilon"] == 8.0  # an ε not compared stays in the methods run
    for run, epsilon in zip(plan[1:], (1.0, 4.0, 10.0)):
        dp = run.config
        assert (dp.privacy, dp.epsilon, dp.delta, run.epsilon) == ("dp", epsilon, 1 / 1200, epsilon)
        assert dp.student_distill().labels == "class" and dp.store is None and dp.copy_gate == 0
        assert dp.methods == (("dp-sgd", {"epsilon": epsilon, "delta": 1 / 1200}),)  # the same (ε, δ)
        assert dp.backend_options()["dp_epsilon"] == epsilon
    assert [p.label for p in plan_comparison(config, (), members=120)] == ["methods"]
    with pytest.raises(ValueError, match="without privacy='dp'"):
        plan_comparison(plan[1].config, (1.0,), members=120)


def test_compare_methods_prints_its_plan(tmp_path, capsys):
    from pipeline.cli.main import main

    assert main(["compare-methods", "--project", str(tmp_path), "--print-config", "--methods", "am,dp-sgd",
                 "--dp-epsilons", "1,4"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert list(plan) == ["methods", "dp generator ε=1", "dp generator ε=4"]
    assert [m[0] for m in plan["methods"]["methods"]] == ["am"]
    assert plan["dp generator ε=4"]["privacy"] == "dp" and plan["dp generator ε=4"]["methods"][0][1]["epsilon"] == 4.0
    assert '"students": ["dp-generator student", "dp-sgd ε=4"]' in captured.err
    assert main(["compare-methods", "--project", str(tmp_path), "--print-config", "--methods", "dp-sgd",
                 "--dp-epsilons", "none"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert list(plan) == ["methods"] and [m[1]["epsilon"] for m in plan["methods"]["methods"]] == [1.0, 8.0]
    assert main(["compare-methods", "--project", str(tmp_path), "--print-config", "--dp-epsilons", "1,-4"]) == 2


def test_compare_methods_closing_table_shows_both_epsilons(fake_metrics, capsys):
    from types import SimpleNamespace

    from pipeline.cli.stages import _print_comparison

    _print_comparison([SimpleNamespace(run_id="plain", metrics=fake_metrics()),
                       SimpleNamespace(run_id="dp", metrics=_dp_run(fake_metrics, 3.98))])
    out = capsys.readouterr().out
    assert "formal ε (guarantee)" in out and "empirical ε (attack's lower bound)" in out
    student = next(line for line in out.splitlines() if DPG in line).split()
    assert student[0] == "dp" and student[-2:] == ["3.98", "0.12"]
    assert next(line for line in out.splitlines() if GKD in line).split()[-2:] == ["none", "n/a"]


# -- the benchmark ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # one tiny DP run with its DP-SGD classifier and 2 pipeline shadows: about 90 s on 2 cores
@pytest.mark.skipif(not os.environ.get("TCKR_DP_BENCH"), reason="benchmarks.dp --tiny takes ~90 s on a 2-core CPU; "
                    "set TCKR_DP_BENCH=1 to run it")
def test_the_dp_benchmark_runs_tiny(tmp_path, capsys):
    from benchmarks.dp import main

    main(["--tiny", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| dataset | target ε | model | formal ε (guarantee) |" in out
    assert "| digits | 10 | DP-generator student |" in out and "| digits | 10 | DP-SGD classifier (dp-sgd ε=10) |" in out


def test_the_tradeoffs_page_shows_a_dp_run_with_its_epsilons(env, add_finished_run, fake_metrics, open_page):
    """The studio: the DP run's student in the table with both ε, and the ε labels on the plot (a toggle)."""
    add_finished_run(env, _dp_run(fake_metrics, 3.98))
    at = open_page("tradeoffs")
    table = at.table[0].value
    row = table[table["model"] == DPG].iloc[0]
    assert (row["formal ε"], row["empirical ε"]) == ("3.98", "0.12")
    assert table.loc[table["model"] == "teacher (real data)", "formal ε"].item() == "none"

    def text_traces() -> list[dict]:
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        return [t for t in spec["data"] if t.get("mode") == "text"]

    assert "ε 3.98 · emp. 0.12" in text_traces()[0]["text"]
    glossary = next(e for e in at.expander if e.label == "What the terms mean")
    assert any("lower bound on ε, not a guarantee" in m.value for m in glossary.markdown)
    at.toggle(key="to_eps_labels").set_value(False).run()
    assert not text_traces()
