"""The printed results table of an experiment or an audit (the CLI's summary)."""

from __future__ import annotations

from typing import Any

from ..privacy.attacks import attack_names

SUMMARY_HEADER = ["model", "accuracy", "audit mode", "attack", "AUC", "95% CI", "TPR@1%FPR", "TPR@0.1%FPR", "AOP",
                  "emp. ε"]


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed results table: one per audited model, mode and attack (the headline attack
    first; the other methods' students with the headline attack only). Every attack the audit ran is
    listed, whichever are registered."""
    rows = []
    models = [("teacher", metrics["teacher"], True), ("student", metrics["student"], True)] + \
        [(key + (" (reads real)" if m.get("reads_real_training_images") else ""), m, False)
         for key, m in metrics.get("methods", {}).items()]
    for name, m, every_attack in models:
        for mode, entry in m.get("mia_modes", {m["mia"].get("mia_mode", "transfer"): m["mia"]}).items():
            headline = entry.get("attack", "lira")
            others = [a for a in attack_names() if a != headline and a in entry]
            rows += [_row(name, m, mode, attack, entry) for attack in [headline] + (others if every_attack else [])]
    return rows


def _row(name: str, m: dict[str, Any], mode: str, attack: str, entry: dict[str, Any]) -> list[str]:
    res = entry.get(attack, entry)
    if "auc" not in res:
        return [name, _fmt(m["accuracy"]), mode, attack, "skipped", "-", "-", "-", "-", "-"]
    ci = res.get("auc_ci95")
    headline = attack == entry.get("attack")
    return [name, _fmt(m["accuracy"]), mode, attack + (" *" if headline else ""), _fmt(res["auc"]),
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", _fmt(res.get("tpr_at_1pct_fpr")),
            _fmt(res.get("tpr_at_0.1pct_fpr")), _fmt(entry["aop"]) if headline and "aop" in entry else "-",
            _fmt(res.get("empirical_epsilon"), 2)]


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
