"""CLI commands for the generator, generation, distillation and audit stages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.cluster import current as current_cluster
from .common import (
    ProgressBars,
    StageLog,
    add_dataset_args,
    add_project_arg,
    dataset_config,
    print_table,
    project_of,
)

logger = logging.getLogger(__name__)
PRESET_NAMES = ("quick", "standard", "paper")  # presets.PRESETS, without importing torch to build --help
PROMPT_FILE_SUFFIXES = (".jsonl", ".csv", ".json", ".txt")  # what captions.prompts.pool_from_file reads


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings -> options by name (JSON values where they parse, else strings; the backend's
    schema then says which type each takes)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r} is not KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:  # text, or NaN / infinity as Python writes them (for the schema to refuse)
            parsed = float(value) if value.strip().lower() in ("nan", "inf", "-inf", "infinity") else value
        out[key.strip().replace("-", "_")] = parsed
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..finetune import FinetuneConfig, finetune

    config = _finetune_config(args)
    if args.resume:  # the run's own recorded config; arguments given that differ from it are refused
        from ..core.common import from_dict
        from ..core.runs import config_differences

        recorded = from_dict(FinetuneConfig, project_of(args).registry().get(args.resume).config)

        def fields(c: Any) -> dict[str, Any]:  # options by name, so their order does not matter
            return {**c.__dict__, "options": dict(c.options)}

        defaults = _finetune_config(args.parser.parse_args([]))
        given = {d.split(":")[0] for d in config_differences(fields(defaults), fields(config))}
        clash = [d for d in config_differences(fields(recorded), fields(config)) if d.split(":")[0] in given]
        if clash:
            raise ValueError(f"finetune --resume {args.resume}: arguments differ from the run's recorded config "
                             f"({'; '.join(clash)}); drop them to resume, or start a new run")
        config = recorded
    with ProgressBars(not args.quiet) as bars:
        result = finetune(config, project_of(args), progress=bars, resume=args.resume)
    print(f"generator saved to {result.generator_dir} [run {result.run_id}]")
    print_table([[k, v] for k, v in result.metrics.items()], ["metric", "value"])
    return 0


def _finetune_config(args: argparse.Namespace) -> Any:
    from ..core.schema import checked
    from ..finetune import FinetuneConfig

    options = _options(args.option)
    for key in ("base", "steps", "lr", "batch_size", "resolution", "rank"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    privacy = _privacy_fields(args)
    return checked(FinetuneConfig(dataset=dataset_config(args), generator=args.generator, options=options,
                                  store=args.store, store_version=args.store_version, template=args.template,
                                  **privacy))


def _privacy_fields(args: argparse.Namespace) -> dict[str, Any]:
    """--privacy / --epsilon / --delta / --epsilon-budget as config fields."""
    privacy = getattr(args, "privacy", None) or "none"
    if privacy == "none" and (getattr(args, "epsilon", None) is not None or getattr(args, "delta", None) is not None):
        raise ValueError("--epsilon / --delta need --privacy dp")
    return {"privacy": privacy, "epsilon": getattr(args, "epsilon", None), "delta": getattr(args, "delta", None),
            "epsilon_budget": getattr(args, "epsilon_budget", None)}


def _add_privacy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--privacy", default=None, choices=("none", "dp"),
                   help="dp: train the generator with DP-SGD (Opacus) at --epsilon / --delta, prompt it with "
                        "class names only, label the student with the generated classes")
    p.add_argument("--epsilon", type=float, default=None, help="DP: the generator's target ε")
    p.add_argument("--delta", type=float, default=None, help="DP: target δ (default 1 / (10 · members))")
    p.add_argument("--epsilon-budget", type=float, default=None,
                   help="the dataset's ε budget in the project's privacy ledger: a warning once runs spend past it")


def cmd_generate(args: argparse.Namespace) -> int:
    from ..core.schema import checked
    from ..generate import GenerateConfig, synthesize

    options = _options(args.option)
    if args.lora:
        options["lora_path"] = args.lora
    if args.fuse:
        options["fuse"] = True
    for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)):
        if value is not None:
            options[key] = value
    if args.size:
        if not args.base:
            raise ValueError("--size applies to a base model (--base); a saved generator generates at "
                             "the size it was trained at")
        if args.size[0] != args.size[1]:
            raise ValueError(f"--size {args.size[0]} {args.size[1]}: only square images are supported")
        options["resolution"] = args.size[0]
    source = args.generator or args.base
    if not source:
        raise ValueError("give --generator (a saved generator folder, runs/<id>/generator) or --base (an SD model)")
    if args.generator and not Path(args.generator).is_dir():
        raise ValueError(f"--generator {args.generator}: no such folder (a saved generator is runs/<id>/generator)")
    prompts = args.prompts
    if prompts and not prompts.startswith("store:") and prompts != "classnames" and not Path(prompts).exists():
        if Path(prompts).suffix.lower() in PROMPT_FILE_SUFFIXES or "/" in prompts:
            raise FileNotFoundError(f"--prompts {prompts}: no such file")
        prompts = f"store:{prompts}"  # a bare name means a caption store
    config = checked(GenerateConfig(
        generator=args.generator or args.base, backend=_base_backend(args) if args.base else None, options=options,
        prompts=prompts or "classnames", template=args.template, allow_nonmember_prompts=args.allow_nonmember_prompts,
        dataset=dataset_config(args), cardinality=args.cardinality, num_images=args.num, round=args.round,
        seed=args.gen_seed, batch_size=args.batch_size, out_dir=args.out))
    with ProgressBars(not args.quiet) as bars:
        result = synthesize(config, project_of(args), progress=bars, cluster=current_cluster())
    print(f"{len(result.synthetic)} images in {result.synthetic.root} ({result.images_per_s:.1f} images/s) "
          f"[run {result.run_id}]")
    return 0


def _base_backend(args: argparse.Namespace) -> str:
    """The backend that samples from ``--base``: as named, or the one registered backend with a base model."""
    from ..generators import base_model_backends

    if args.backend:
        return args.backend
    backends = base_model_backends()
    if len(backends) != 1:
        raise ValueError(f"name the backend of --base with --backend ({', '.join(backends) or 'none takes a base'})")
    return backends[0]


def _print_audit_table(metrics: dict[str, Any]) -> None:
    from ..views.results import SUMMARY_HEADER, summary_rows

    print()
    print_table(summary_rows(metrics), SUMMARY_HEADER)
    teacher, student = metrics["teacher"], metrics["student"]
    floor = teacher["mia"].get("fpr_floor")
    print("\n* headline attack (AUC and AOP). n/a: a TPR at an FPR below 1/non-members"
          + (f" ({floor:.4f})" if floor else "") + " cannot be measured.")
    delta = teacher["mia"].get("empirical_epsilon_delta")
    if delta is not None:
        print(f"emp. ε: empirical ε, an attack's lower bound on ε (95% Clopper-Pearson, δ = {delta:g} for a model "
              "without DP, its own δ for a DP one), not a guarantee. Formal ε (a DP guarantee): "
              + ", ".join(f"{key} {_formal_text(m.get('formal_epsilon', m.get('epsilon')))}"
                          for key, m in [("teacher", teacher), ("student", student),
                                         *(metrics.get("methods") or {}).items()]) + ".")
    ratio = f"{student['accuracy'] / teacher['accuracy']:.3f}" if teacher["accuracy"] > 0 else "n/a (teacher 0)"
    print(f"student / teacher accuracy: {ratio}; "
          f"MIA AUC ({teacher['mia'].get('attack', 'lira')}) teacher {teacher['mia']['auc']:.3f} "
          f"[{teacher['mia'].get('mia_mode', 'transfer')}] -> student {student['mia']['auc']:.3f} "
          f"[{student['mia'].get('mia_mode', 'transfer')}]")
    methods = metrics.get("methods") or {}
    memorisation = metrics.get("memorisation")
    if memorisation:
        ct = memorisation.get("ct")
        print(f"memorisation of the synthetic rounds: {memorisation['copies']} copies flagged "
              f"({memorisation['copy_rate']:.2%}; fresh real images {memorisation['nonmember_flag_rate']:.2%}), "
              "data-copying C_T " + (f"{ct:.2f}" if ct is not None else "n/a") + " (< -3: copying)"
              + (f"; a copy: {memorisation['rule']}" if memorisation.get("rule") else ""))
    if methods:
        print()
        print_table([[key, "real members" if m.get("reads_real_training_images") else "no (data-free)",
                      f"{m['epsilon']:.2f}" if m.get("epsilon") is not None else "none",
                      f"{m['accuracy'] / max(teacher['accuracy'], 1e-9):.3f}",
                      f"{m.get('train', {}).get('seconds', float('nan')):.0f}"] for key, m in methods.items()],
                    ["method", "reads real training images", "formal ε", "accuracy / teacher", "seconds"])


def _formal_text(epsilon: float | None) -> str:
    return "none" if epsilon is None else f"{epsilon:.2f}"


def _run_experiment(args: argparse.Namespace, config: Any, run_id: str | None = None, resume: bool = False) -> int:
    _experiment(args, config, run_id, resume)
    return 0


def _experiment(args: argparse.Namespace, config: Any, run_id: str | None = None, resume: bool = False) -> Any:
    """Run one experiment with progress bars; print its audit table; return its result."""
    from ..core.runs import RunCancelled
    from ..experiment import run_experiment

    with ProgressBars(not args.quiet) as bars:
        stages = StageLog(forward=bars)  # INFO lines for a run's log (--run-log, as the studio starts runs)
        try:
            result = run_experiment(config, project_of(args), progress=stages, run_id=run_id, resume=resume,
                                    cluster=current_cluster())
        except (KeyboardInterrupt, RunCancelled):
            if args.run_log:  # a terminal shows the stage on its progress bar
                logger.warning("cancelled %s", stages.where())
            raise
        except Exception:
            if args.run_log:  # the CLI boundary then logs the error and its traceback
                logger.error("failed %s", stages.where())
            raise
    _print_audit_table(result.metrics)
    print(f"run {result.run_id} finished in {result.seconds:.0f} s; metrics in "
          f"{project_of(args).runs_dir / result.run_id / 'metrics.json'}")
    return result


def cmd_compare_methods(args: argparse.Namespace) -> int:
    """The methods run, then one DP run per ε of --dp-epsilons (DP generator + DP-SGD at the same ε), then
    one table of every model with its formal and empirical ε."""
    from ..comparison import parse_epsilons, plan_comparison, plan_summary
    from ..core.common import to_jsonable
    from ..privacy.accounting import BudgetError

    # 1. the plan: the preset's config with the methods, one DP run per ε
    epsilons = parse_epsilons(args.dp_epsilons)
    config, why, profile = _preset(args)
    config = replace(config, methods=_methods(args.methods, epsilons or DP_EPSILONS))
    plan = plan_comparison(config.validate(), epsilons, profile.members)
    plan = [replace(p, config=p.config.validate()) for p in plan]
    if args.print_config:
        for line in [*why, *(json.dumps(to_jsonable(row), ensure_ascii=False) for row in plan_summary(plan))]:
            print(f"# {line}", file=sys.stderr)
        print(json.dumps({p.label: to_jsonable(p.config) for p in plan}, indent=2, ensure_ascii=False))
        return 0
    # 2. each run in turn (a DP budget the planned steps cannot meet is said and skipped)
    results, skipped = [], []
    for planned in plan:
        print(f"\n== {planned.label} ==")
        _print_plan(planned.config, [*why, f"run {len(results) + len(skipped) + 1} of {len(plan)}: {planned.label}"],
                    profile, max_hours=args.max_hours)
        try:
            results.append(_experiment(args, planned.config))
        except BudgetError as err:
            skipped.append(f"{planned.label}: {err}")
            print(f"skipped {planned.label}: {err}", file=sys.stderr)
    # 3. one table over the runs
    _print_comparison(results)
    for line in skipped:
        print(f"not run: {line}")
    return 0 if results else 2


def _print_comparison(results: list[Any]) -> None:
    from ..views.report import points_from_metrics, points_table

    rows = points_table([p for r in results for p in points_from_metrics(r.run_id, r.metrics)])
    print()
    print_table([[r["run"], r["model"], r["accuracy"], f"{r['MIA AUC']:.3f} {r['AUC 95% CI']}", r["audit mode"],
                  r["formal ε"], r["empirical ε"]] for r in rows],
                ["run", "model", "accuracy", "MIA AUC [95% CI]", "mode", "formal ε (guarantee)",
                 "empirical ε (attack's lower bound)"])


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit import AuditConfig
    from ..core.common import from_dict, read_json
    from ..core.schema import checked
    from ..experiment import audit_experiment

    project = project_of(args)
    record = project.registry().get(args.run)
    if record.kind != "experiment":
        raise ValueError(f"run {args.run} is a {record.kind} run; `audit --run` takes an experiment run id")
    saved = record.config.get("audit", {})
    base = from_dict(AuditConfig, {k: v for k, v in saved.items() if k in AuditConfig.__dataclass_fields__},
                     source=f"the saved audit config of run {record.id}")
    config = checked(replace(base, **_audit_changes(args, base, record.id)))
    with ProgressBars(not args.quiet) as bars:
        result = audit_experiment(config, project, progress=bars, cluster=current_cluster())
    experiment = read_json(record.run_dir / "metrics.json") if (record.run_dir / "metrics.json").exists() else {}
    metrics = {name: {**result.metrics[name],
                      "per_class_accuracy": experiment.get(name, {}).get("per_class_accuracy")}
               for name in ("teacher", "student")}
    _print_audit_table(metrics)
    print(f"audit {result.run_id} of {record.id} finished in {result.seconds:.0f} s; metrics in "
          f"{project.runs_dir / result.run_id / 'metrics.json'}")
    return 0


def _audit_changes(args: argparse.Namespace, base: Any, run_id: str) -> dict[str, Any]:
    """The audit settings ``audit --run`` changes from the run's own."""
    changes: dict[str, Any] = {"experiment": run_id}
    if args.attack:
        changes["attacks"] = tuple(a.strip() for a in args.attack.split(",") if a.strip())
        if base.headline not in changes["attacks"]:
            changes["headline"] = changes["attacks"][0]
    if args.headline:
        changes["headline"] = args.headline
    if args.mode:
        changes["modes"] = tuple(m.strip() for m in args.mode.split(",") if m.strip())
    for key in ("shadows", "pipeline_shadows", "workers", "shadow_dir"):
        value = getattr(args, key)
        if value is not None:
            changes["n_shadows" if key == "shadows" else key] = value
    return changes


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..presets import quickstart_config

    if getattr(args, "studio", False):  # a busy port is said before the experiment, not after it
        from ..core.launch import check_port

        check_port("studio", args.host, args.port)
    _print_plan(quickstart_config(), ["the standard preset on the built-in digits (offline, CPU)"],
                max_hours=args.max_hours)
    code = _run_experiment(args, quickstart_config())
    if code == 0 and getattr(args, "studio", False):
        from ..core.launch import launch_studio

        return launch_studio(project_of(args).root, host=args.host, port=args.port)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from ..core.common import from_dict
    from ..experiment import ExperimentConfig, config_json

    if args.queued:
        # a background job is cancelled with SIGINT; a studio started with `nohup ... &` hands its
        # children SIGINT ignored, and Python then never turns it into KeyboardInterrupt: take it back
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        record = project_of(args).registry().get(args.queued)
        config = from_dict(ExperimentConfig, record.config, source=f"the saved config of run {record.id}")
        return _run_experiment(args, config, run_id=record.id)
    models = _model_flags(args)
    if args.resume:
        if args.config or args.dataset or args.preset or models:
            raise ValueError("--resume continues a run with its recorded config; drop the config file, "
                             "--dataset, --preset and " + (", ".join(models) or "the model flags"))
        from ..core.jobs import reconcile

        reconcile(project_of(args))  # a killed attempt still marked running is failed first
        record = project_of(args).registry().get(args.resume)
        print(f"resuming {record.id} (was {record.status}); finished stages are reused", file=sys.stderr)
        config = from_dict(ExperimentConfig, record.config, source=f"the saved config of run {record.id}")
        return _run_experiment(args, config, run_id=record.id, resume=True)
    if args.config and args.dataset:
        raise ValueError("give a config file or --dataset, not both (edit the dataset in the config file)")
    if args.config:
        if args.preset or models:
            flags = ", ".join((["--preset"] if args.preset else []) + models)
            raise ValueError(f"{flags}: only with --dataset; a config file is run as written (edit its fields)")
        config, why, profile = ExperimentConfig.from_file(Path(args.config)), [f"config file {args.config}"], None
    elif args.dataset:
        config, why, profile = _preset(args)
    else:
        raise ValueError("give --dataset SPEC (a preset is chosen from the data), a config file "
                         "(see --print-config) or --queued RUN_ID")
    privacy = _privacy_fields(args)
    if privacy["privacy"] == "dp" or privacy["epsilon_budget"] is not None:
        if privacy["privacy"] == "dp":  # class prompts only, no copy gate (see ExperimentConfig)
            privacy.update(store=None, store_version=None, copy_gate=0)
            why = [*why, f"privacy: DP-SGD generator at ε={privacy['epsilon']:g}; class prompts; student labelled "
                         "by the generated classes"]
        config = replace(config, **{k: v for k, v in privacy.items() if v is not None and v != "none"})
    if getattr(args, "methods", None) is not None:
        config = replace(config, methods=_methods(args.methods))
        why = [*why, f"methods: gkd (the student) + {', '.join(n + (f' {o}' if o else '') for n, o in config.methods) or 'none'}"]
    config = config.validate()  # what the arguments made of the preset, checked as a config file would be
    if args.print_config:
        for line in why:
            print(f"# {line}", file=sys.stderr)
        print(config_json(config))
        return 0
    quick = _quick_alternative(args, config, profile)
    _print_plan(config, why, profile, quick, max_hours=args.max_hours)
    return _run_experiment(args, config)


def _quick_alternative(args: argparse.Namespace, config: Any, profile: Any) -> Any:
    """The quick preset on the same data, to say what it would save (None: not a standard preset run)."""
    if not args.dataset or profile is None or (args.preset or "standard") != "standard":
        return None
    from ..presets import preset_config

    quick, _ = preset_config(config.dataset, profile, "quick")
    return replace(quick, methods=config.methods, teacher=replace(quick.teacher, device=config.teacher.device),
                   distill=replace(quick.distill, student=replace(quick.distill.student,
                                                                  device=config.teacher.device)))


DP_EPSILONS = (1.0, 8.0)  # `dp-sgd` without @EPS: the two budgets of the comparison


def _methods(text: str, dp_default: tuple[float, ...] = DP_EPSILONS) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``gkd,am,bss,gkd+bss,dp-sgd[@EPS]`` -> the config's other methods (GKD is always the student); a bare
    ``dp-sgd`` at each ε of ``dp_default``."""
    from ..methods import method_names

    out: list[tuple[str, dict[str, Any]]] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, eps = item.partition("@")
        if name == "gkd":
            continue
        if name not in method_names():
            raise ValueError(f"unknown method {name!r}; valid: gkd, {', '.join(method_names())} (dp-sgd@EPS for one ε)")
        if name == "dp-sgd":
            try:
                budgets = (float(eps),) if eps else dp_default
            except ValueError:
                raise ValueError(f"{item}: the ε after @ must be a number") from None
            out += [(name, {"epsilon": e}) for e in budgets]
        elif eps:
            raise ValueError(f"{item}: only dp-sgd takes @EPS")
        else:
            out.append((name, {}))
    return tuple(out)


def _preset(args: argparse.Namespace) -> tuple[Any, list[str], Any]:
    """The preset's config for ``--dataset``, its reasons, and the data profile it was chosen from."""
    from ..data.datasets import load_dataset
    from ..presets import DataProfile, preset_config, with_models

    dataset_cfg = dataset_config(args)
    dataset = load_dataset(dataset_cfg)
    profile = DataProfile.of(dataset, device=args.device)
    config, why = preset_config(dataset_cfg, profile, args.preset or "standard")
    config, changed = with_models(config, base=getattr(args, "base", None),
                                  captioner_model=getattr(args, "captioner_model", None),
                                  classifier=getattr(args, "classifier", None))
    why = [*why, *changed]
    if args.device != "auto":  # asked for a device: every stage runs there, not only the plan
        config = replace(config, teacher=replace(config.teacher, device=args.device),
                         distill=replace(config.distill, student=replace(config.distill.student, device=args.device)),
                         generator_options={**config.generator_options, "device": args.device})
    return config, why, profile


def _model_flags(args: argparse.Namespace) -> list[str]:
    """The model flags given (--base, --captioner-model, --classifier)."""
    return [f"--{name.replace('_', '-')}" for name in ("base", "captioner_model", "classifier")
            if getattr(args, name, None) is not None]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, metavar="DIR_OR_ID",
                   help="the generator's base model (the paper preset's Stable Diffusion): a local folder written "
                        "by save_pretrained, or a hub id (default: the preset's, stabilityai/stable-diffusion-2)")
    p.add_argument("--captioner-model", default=None, metavar="DIR_OR_ID", dest="captioner_model",
                   help="the BLIP / BLIP-2 captioner's model: a local folder or a hub id (default: the preset's)")
    p.add_argument("--classifier", default=None, metavar="NAME",
                   help="teacher and student (and so shadows): a registered classifier or any timm model name; "
                        "pretrained weights, where the preset asks for them, come from the Hub or its local cache")


def _print_plan(config: Any, why: list[str], profile: Any = None, quick: Any = None, *, max_hours: float) -> None:
    """What the run will do and, from a few timed steps, about how long each stage takes (``profile``:
    the data's, when the caller has it already; else the dataset is read for it); which stage dominates,
    and what the ``quick`` preset's config would take instead. A plan estimated to take more than
    ``max_hours`` is refused (after it is printed), before anything runs."""
    from ..data.datasets import load_dataset
    from ..presets import DataProfile, check_plan, dominant, duration_text, estimate_stages, estimated_wall

    check_plan([], max_hours)  # a bad limit fails before the timed steps

    print("plan:")
    for line in why:
        print(f"  {line}")
    if profile is None:
        profile = DataProfile.of(load_dataset(config.dataset), device=config.teacher.device)
    stages = estimate_stages(config, profile)
    print("estimated time per stage (from a few timed steps on this machine):")
    for s in stages:
        print(f"  {s.stage:<17} {duration_text(s.seconds):>8}  {s.what}")
    total = estimated_wall(stages)
    print(f"  {'total (wall)':<17} {duration_text(total):>8}  the longest: {dominant(stages)}")
    if quick is not None and total is not None:
        faster = estimated_wall(estimate_stages(quick, profile))
        if faster is not None:
            print(f"  --preset quick would take about {duration_text(faster)} (saving "
                  f"{duration_text(total - faster)}: half "
                  "the training, the student audited in transfer mode only, no CAS)")
    sys.stdout.flush()
    check_plan(stages, max_hours)


def _add_methods_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--methods", default=default, metavar="LIST",
                   help="students on the same plane, comma-separated: gkd (the generated-data student, always "
                        "run), am (activation maximisation, data-free), gkd+bss (boundary samples on the "
                        "synthetic rounds, data-free), bss (boundary samples on the real members: a non-private "
                        "reference), dp-sgd (real members with DP; ε 1 and 8, or dp-sgd@EPS)"
                        + (f" (default: {default})" if default else ""))


def _add_max_hours_arg(p: argparse.ArgumentParser) -> None:
    from ..presets import MAX_HOURS

    p.add_argument("--max-hours", type=float, default=MAX_HOURS, metavar="H",
                   help="refuse to start a run whose estimated time (the plan printed before it starts) is "
                        f"longer than this (default {MAX_HOURS:g} h): a typo such as 10^12 rounds stops at once")


def cmd_studio(args: argparse.Namespace) -> int:
    from ..core.launch import launch_studio

    return launch_studio(project_of(args).root, host=args.host, port=args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..core.launch import launch_demo

    project = project_of(args)
    record = project.registry().get(args.run)  # an unknown id fails here, before a server starts
    if record.kind != "experiment" or record.status != "done":
        raise ValueError(f"run {args.run} is a {record.status} {record.kind} run; the demo needs a finished "
                         "experiment run (see `runs list --kind experiment --status done`)")
    return launch_demo(project.root, args.run, host=args.host, port=args.port)


def cmd_report(args: argparse.Namespace) -> int:
    from ..views.stakeholder import ReportConfig, build_report

    config = ReportConfig(run_ids=tuple(args.run), out_dir=Path(args.out) if args.out else None,
                          pdf_plot=not args.no_plot_image)
    built = build_report(config, project_of(args))
    for note in built.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {built.html} (opens offline)" + (f" and {built.pdf}" if built.pdf else ""))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from ..experiment import config_json
    from ..presets import quickstart_config

    print(config_json(quickstart_config()))
    return 0


def add_stage_commands(sub: Any) -> None:
    _add_finetune(sub)
    _add_generate(sub)
    _add_quickstart(sub)
    _add_run(sub)
    _add_compare_methods(sub)
    _add_audit(sub)
    _add_studio(sub)
    _add_demo(sub)
    _add_report(sub)
    _add_config(sub)


def _add_finetune(sub: Any) -> None:
    p = sub.add_parser("finetune", help="train a generator from scratch or fine-tune a pretrained one (LoRA)")
    add_project_arg(p)
    add_dataset_args(p)
    p.add_argument("--generator", default="scratch", help="a registered generator backend (default scratch; an unknown name lists them)")
    p.add_argument("--base", default=None, help="backends that fine-tune a base model: its hub id or local folder")
    p.add_argument("--store", default=None, help="caption store (default: class names only)")
    p.add_argument("--store-version", type=int, default=None)
    p.add_argument("--template", default="class_caption", help="class | caption | class_caption | format")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (backends with a LoRA)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other backend config field (repeatable), e.g. --option snr_gamma=5")
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue an interrupted finetune run from its newest checkpoint, with its recorded "
                        "config (other arguments must match it)")
    _add_privacy_args(p)
    p.set_defaults(func=cmd_finetune, parser=p)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate a class-balanced synthetic set (resumable)")
    add_project_arg(p)
    add_dataset_args(p)
    p.add_argument("--generator", default=None, help="a saved generator folder (runs/<id>/generator)")
    p.add_argument("--base", default=None, help="or a base model to sample from: hub id or local folder")
    p.add_argument("--backend", default=None, help="the backend of --base (default: the one backend that takes a "
                                                   "base model)")
    p.add_argument("--lora", default=None, help="LoRA .safetensors file or folder to load onto --base")
    p.add_argument("--fuse", action="store_true", help="fuse the LoRA into the weights before generating")
    p.add_argument("--prompts", default=None,
                   help="caption store name (or store:NAME@VERSION); a per-image caption file (.jsonl / .csv "
                        "from `captions export`), limited to the MIA members' captions; a per-class prompt "
                        "file: TCKR .json {class: [captions]} or .txt lines 'class: caption' (TCKR's "
                        "*_finetuning.txt) or 'class<TAB>caption', which has no image ids and is refused "
                        "unless --allow-nonmember-prompts; or classnames (default)")
    p.add_argument("--allow-nonmember-prompts", action="store_true",
                   help="use a per-class .json / .txt prompt file although it cannot be limited to the "
                        "members: captions of non-members would condition the generator and make the "
                        "membership audit unsound (TCKR's own files caption the whole training set)")
    p.add_argument("--template", default="class_caption")
    p.add_argument("--out", default=None, help="output folder (default: the run folder); reuse it to resume")
    p.add_argument("--num", type=int, default=None, help="number of images (default: cardinality x members)")
    p.add_argument("--cardinality", type=float, default=1.0, help="images per member image (default 1)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"), help="with --base: image size")
    p.add_argument("--round", type=int, default=0, help="regeneration round (fresh seeds per round)")
    p.add_argument("--gen-seed", type=int, default=0, help="base seed of the images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="other backend options")
    p.set_defaults(func=cmd_generate)


def _add_quickstart(sub: Any) -> None:
    p = sub.add_parser("quickstart", help="the whole loop on the built-in dataset (offline, CPU, about 4 min)")
    add_project_arg(p)
    _add_max_hours_arg(p)
    p.add_argument("--studio", action="store_true", help="then open the studio on the results")
    p.add_argument("--host", default="127.0.0.1", help="studio address (default localhost only)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_quickstart)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="the whole loop: on a dataset with a preset chosen from the data, or from a "
                                   "JSON config",
                       description="Run the whole loop. With --dataset, a preset is chosen from the data (image "
                                   "size, channels, counts) and the device; --print-config shows it as JSON, "
                                   "which can be edited and run with `run CONFIG.json`. Before it starts, the "
                                   "run prints its plan and an estimated time per stage.")
    add_project_arg(p)
    p.add_argument("config", nargs="?", help="JSON file with ExperimentConfig fields")
    add_dataset_args(p)
    p.set_defaults(dataset=None)
    p.add_argument("--preset", default=None, choices=PRESET_NAMES,
                   help="quick (a first look) | standard (default: chosen from the data) | paper (TCKR's "
                        "recipe: SD 2 + LoRA, BLIP-2, MobileNetV3; needs a GPU, and the Hub or --base, "
                        "--captioner-model)")
    _add_model_args(p)
    p.add_argument("--device", default="auto", help="device the preset plans for: auto | cpu | cuda")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_max_hours_arg(p)
    p.add_argument("--queued", default=None, metavar="RUN_ID",
                   help="execute a run queued by the studio (its config is in the registry)")
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue an interrupted experiment with its recorded config: finished stages are "
                        "reused, the interrupted one continues from its checkpoint")
    _add_methods_arg(p, None)
    _add_privacy_args(p)
    p.set_defaults(func=cmd_run)


def _add_compare_methods(sub: Any) -> None:
    p = sub.add_parser("compare-methods", help="every way to a private student on one plane: GKD, activation "
                                               "maximisation, BSS, GKD+BSS, and the DP generator beside DP-SGD at "
                                               "each ε",
                       description="`run --dataset SPEC --methods ...` with every method by default: one teacher, "
                                   "one split, one set of shadows; then, for each ε of --dp-epsilons, a DP run: the "
                                   "generator trained with DP-SGD at ε (class prompts, class-labelled student) and "
                                   "the DP-SGD classifier at the same (ε, δ), audited together. Prints each run's "
                                   "table, then one table of every model with its formal ε (the guarantee) and "
                                   "empirical ε (an attack's lower bound); every model is on the Trade-offs plot.")
    add_project_arg(p)
    add_dataset_args(p)
    p.set_defaults(dataset="digits", config=None, queued=None, resume=None)
    p.add_argument("--preset", default=None, choices=PRESET_NAMES, help="as for run (default: chosen from the data)")
    _add_model_args(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_max_hours_arg(p)
    _add_methods_arg(p, "gkd,am,bss,gkd+bss,dp-sgd")
    p.add_argument("--dp-epsilons", default="1,4,10", metavar="LIST",
                   help="ε of the DP generator, comma-separated (default 1,4,10): one DP run each, with dp-sgd at the "
                        "same ε beside it (a bare dp-sgd in --methods takes these ε); none: no DP run (dp-sgd at 1 "
                        "and 8 in the methods run)")
    p.set_defaults(func=cmd_compare_methods)


def _add_audit(sub: Any) -> None:
    p = sub.add_parser("audit", help="membership-inference audit of a finished experiment (reuses cached shadows)")
    add_project_arg(p)
    p.add_argument("--run", required=True, metavar="EXPERIMENT_ID", help="a finished experiment run id")
    p.add_argument("--attack", default=None, help="comma-separated attacks (default: the run's; lira,rmia,loss)")
    p.add_argument("--headline", default=None, help="attack the headline AUC and AOP use (default: rmia)")
    p.add_argument("--mode", default=None, help="student audit modes: transfer, pipeline or both (comma-separated)")
    p.add_argument("--shadows", type=int, default=None, help="transfer shadows (more are trained, fewer reuse a prefix)")
    p.add_argument("--pipeline-shadows", type=int, default=None, dest="pipeline_shadows",
                   help="pipeline shadows (each reruns generator, rounds, teacher and student)")
    p.add_argument("--workers", type=int, default=None, help="processes for pipeline shadows (default: CPU cores)")
    p.add_argument("--shadow-dir", default=None, dest="shadow_dir",
                   help="reuse this transfer-shadow cache (refused if made for another recipe)")
    p.set_defaults(func=cmd_audit)


def _add_studio(sub: Any) -> None:
    p = sub.add_parser("studio", help="open the studio (Streamlit) on a project")
    add_project_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_studio)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="stakeholder demo (Gradio): a run's teacher and student on your images")
    add_project_arg(p)
    p.add_argument("--run", required=True, help="a finished experiment run id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_demo)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="stakeholder report of finished experiments: HTML (opens offline) and PDF")
    add_project_arg(p)
    p.add_argument("--run", required=True, action="append", metavar="EXPERIMENT_ID",
                   help="a finished experiment run id (repeat for several runs)")
    p.add_argument("--out", default=None, help="output folder (default: <project>/reports/<time>-<run>)")
    p.add_argument("--no-plot-image", action="store_true",
                   help="leave the plot out of the PDF (it needs kaleido with Chrome / Chromium)")
    p.set_defaults(func=cmd_report)


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="print the quickstart's config as JSON (a template for `run`)")
    p.set_defaults(func=cmd_config)
