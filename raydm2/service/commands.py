"""The `raydm2` commands: each takes the parsed arguments, validates settings once, calls the library and prints
what it did. `raydm2.service.cli` parses arguments and maps errors to exit codes."""

from __future__ import annotations

import os

import yaml

from raydm2.data import ingest as ingest_mod
from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import merge_settings, nested, validate_config, validate_pretrain
from raydm2.ledger.presets import PRESETS
from raydm2.ledger.project import Project
from raydm2.service import loop
from raydm2.service.console import result, say


def _parse_set(values: list[str]) -> dict:
    """`--set strategy.k=5` pairs; values are parsed as YAML scalars so numbers and booleans keep their type."""
    out = {}
    for item in values or []:
        if "=" not in item:
            raise RayDM2Error(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RayDM2Error(f"--set {key}: cannot parse value {raw!r} ({exc})") from None
    return out


# ---- ingest --------------------------------------------------------------------------------------------------
def cmd_ingest(args) -> None:
    fmt = args.format
    if fmt in ("mnist", "fashion_mnist"):
        counts = ingest_mod.ingest_idx_dataset(args.root, args.out, source=fmt)
    elif fmt == "idx":
        x, y = ingest_mod.load_idx_pair(args.images, args.labels)
        counts = {"rows": len(pool.append_arrays(args.out, x, y, "idx"))}
    elif fmt == "cifar_npz":
        counts = ingest_mod.ingest_npz_dataset(args.path, args.out, source="cifar10")
    elif fmt == "cifar_batches":
        x, y = ingest_mod.load_cifar_batches(args.files)
        counts = {"rows": len(pool.append_arrays(args.out, x, y, "cifar10"))}
    elif fmt == "folder":
        from raydm2.data import folder

        rows, classes, skipped = folder.ingest_folder(args.root, args.out, distributed=args.distributed)
        counts = {"rows": rows}
        if classes:
            say("classes (label index = position): " + ", ".join(classes))
        _print_skipped(skipped)
    elif fmt == "numpy":
        x, y = ingest_mod.load_numpy(args.images, args.labels)
        counts = {"rows": len(pool.append_arrays(args.out, x, y, "numpy"))}
    elif fmt == "sample":
        root = ingest_mod.sample_data_dir()
        counts = {
            f"mnist/{k}": v
            for k, v in ingest_mod.ingest_idx_dataset(os.path.join(root, "mnist"), f"{args.out}/mnist", "mnist").items()
        }
        counts.update(
            {
                f"cifar10/{k}": v
                for k, v in ingest_mod.ingest_npz_dataset(
                    os.path.join(root, "cifar10", "cifar10_sample.npz"), f"{args.out}/cifar10", "cifar10"
                ).items()
            }
        )
    else:  # argparse restricts choices; reaching here is a bug
        raise AssertionError(fmt)
    for name, rows in counts.items():
        say(f"{name}: {rows} images appended")


def _print_skipped(skipped: list[tuple[str, str]], shown: int = 20) -> None:
    if not skipped:
        return
    say(f"left out {len(skipped)} file{'s' if len(skipped) != 1 else ''}:")
    for path, reason in skipped[:shown]:
        say(f"  {path}: {reason}")
    if len(skipped) > shown:
        say(f"  ... and {len(skipped) - shown} more")


# ---- init / seed / status ------------------------------------------------------------------------------------
def _settings(args) -> dict:
    """Project settings from --preset, then --config, then --pool/--test-pool, then --set (later wins)."""
    layers = [PRESETS[args.preset]] if args.preset else []
    if args.config:
        with open(args.config) as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise RayDM2Error(f"malformed {args.config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise RayDM2Error(f"{args.config}: expected a mapping of settings, got {type(loaded).__name__}")
        layers.append(loaded)
    layers.append({k: v for k, v in {"pool": args.pool, "test_pool": args.test_pool}.items() if v})
    return merge_settings(*layers, nested(_parse_set(args.set)))


def cmd_pretrain(args) -> None:
    from raydm2.runtime import connect
    from raydm2.training.pretrain import check, pretrain

    data = _settings(args)
    data.setdefault("name", "pretrain")
    # Pretraining leaves the classifier's head out, so without a preset any valid class list does.
    data.setdefault("classes", ["unused-0", "unused-1"])
    config = validate_config(data, source="pretrain settings")
    settings = validate_pretrain({k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size,
                                                    "lr": args.lr, "temperature": args.temperature}.items()
                                  if v is not None})
    runs = args.runs or os.path.join(os.path.dirname(os.path.abspath(args.out)), "pretrain_runs")
    check(config)  # before Ray starts
    connect()
    metrics = pretrain(config, settings, args.out, runs)
    say(f"wrote {args.out}: the {config.model.arch} backbone after {settings.epochs} epochs of SimCLR on "
        f"{metrics['images']:,} images (final loss {metrics['ssl_loss']:.3f}); start projects from it with "
        f"--set model.weights={args.out}")


def cmd_init(args) -> None:
    data = _settings(args)
    data.setdefault("name", args.name or os.path.basename(os.path.abspath(args.project)))
    project = loop.create_project(args.project, validate_config(data, source="project settings"))
    say(f"created project {project.config.name!r} at {args.project}")


def cmd_seed(args) -> None:
    project = Project.open(args.project)
    selection = loop.seed(project, args.n, strategy=args.strategy)
    how = "at random" if args.strategy == "random" else "by typicality (typiclust)"
    say(f"round 0: {selection.num_rows} images selected {how} (seed {project.config.seed})")


def cmd_schedule(args) -> None:
    from raydm2.runtime import job_client
    from raydm2.service import schedule

    if args.once == bool(args.every):
        raise RayDM2Error("give exactly one of --once (for cron) or --every INTERVAL (e.g. 24h)")
    interval = schedule.parse_interval(args.every) if args.every else None  # refused before any connection
    project = Project.open(args.project)
    address = args.address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    client = job_client(address, explicit=bool(args.address))
    if args.once:
        outcome = schedule.schedule_once(client, project, args.job)
        result({"submitted": outcome.submitted, "submission_id": outcome.submission_id, "reason": outcome.reason},
               outcome.reason)
    else:
        schedule.run_every(client, project.uri, interval, args.job)


def cmd_report(args) -> None:
    from raydm2.service import report

    project = Project.open(args.project)
    paths = report.write(project, args.out, args.round, args.baseline)
    say(f"wrote {paths[-1]} (open it in a browser) and {len(paths) - 1} PNG files in {args.out}")


def cmd_status(args) -> None:
    from raydm2.progress import pipeline_order, readable

    project = Project.open(args.project)
    rounds = []
    for n in project.round_ids():
        m = project.manifest(n)
        rounds.append({"round": n, "state": m["state"], "strategy": m["strategy"],
                       "selected": m["counts"].get("selected"), "labels": project.labels(n).num_rows,
                       "clean_accuracy": m["metrics"].get("clean_accuracy"),
                       "robust_accuracy": m["metrics"].get("robust_accuracy"), "timings": m["timings"]})
    labels = project.all_labels().num_rows
    result({"project": project.config.name, "uri": project.uri, "pool": project.config.pool, "rounds": rounds,
            "labels": labels})
    if args.json:
        return
    say(f"project {project.config.name} ({project.uri}); pool {project.config.pool}")
    say(f"{'round':>5}  {'state':<10} {'strategy':<16} {'selected':>8} {'labels':>6}  {'clean':>6} {'robust':>6}  "
        "seconds")
    for r in rounds:
        clean, robust = r["clean_accuracy"], r["robust_accuracy"]
        timings = ", ".join(f"{readable(k)} {v:.1f}" for k, v in sorted(r["timings"].items(), key=pipeline_order))
        say(f"{r['round']:>5}  {r['state']:<10} {r['strategy']:<16} {r['selected'] or '-':>8} {r['labels']:>6}  "
            f"{'-' if clean is None else f'{clean:.3f}':>6} {'-' if robust is None else f'{robust:.3f}':>6}  {timings}")
    say(f"labels in total: {labels}")


def _open_with_overrides(args) -> Project:
    """Open the project and apply `--set` overrides for this run only (project.yaml is not rewritten)."""
    project = Project.open(args.project)
    overrides = _parse_set(getattr(args, "set", None))
    if overrides:
        project.config = project.config.with_overrides(overrides)
    return project


def cmd_label(args) -> None:
    if args.oracle == bool(args.file):
        raise RayDM2Error("give either a label file (--file) or --oracle (ground truth from the pool, simulation)")
    done = loop.label(Project.open(args.project), file=args.file, fmt=args.format, oracle=args.oracle,
                      round_=args.round, allow_unselected=args.allow_unselected, from_name=args.from_name)
    left_out = [f"{n} {what}" for what, n in (("skipped by their annotator", done.get("cancelled")),
                                               ("not annotated yet", done.get("unannotated"))) if n]
    say(f"round {done['round']}: {done['labels']} labels ({'complete' if done['complete'] else 'partial'})"
        + (f"; left out: {', '.join(left_out)}" if left_out else ""))


def cmd_export(args) -> None:
    from raydm2.ledger import exchange

    project = Project.open(args.project)
    n = args.round if args.round is not None else project.latest_in_state("selected", "exported")
    if n is None:
        raise RayDM2Error("no round with a selection to export")
    count = exchange.export(project, n, args.format, args.out, args.url_prefix)
    say(f"round {n}: exported {count} items to {args.out}")


def cmd_train(args) -> dict:
    project = _open_with_overrides(args)
    metrics = loop.train(project, args.round)
    shown = {k: v for k, v in sorted(metrics.items()) if v is not None}
    if not getattr(args, "in_round", False):
        result({"trained": shown})
    say(_trained_line(shown))
    return shown


def _trained_line(m: dict) -> str:
    line = f"trained on {m.get('train_rows', '?')} labels, {m.get('epoch', '?')} epochs"
    if m.get("images_per_s"):
        line += f" ({m['images_per_s']:,.0f} images/s)"
    if m.get("clean_accuracy") is not None:
        line += f": accuracy {m['clean_accuracy']:.3f}"
        if m.get("robust_accuracy") is not None:
            line += f", under FGSM ε={m.get('eval_epsilon', 0):.4f} {m['robust_accuracy']:.3f}"
        line += f" on {m.get('test_images', '?')} test images"
    return line + (f"; train loss {m['train_loss']:.3f}" if m.get("train_loss") is not None else "")


def _acquire_options(args, project: Project):
    """project.yaml's `compute` section, with --actors / --batch-size taking precedence for this run."""
    return loop.acquire_options(project.config, actors=args.actors, batch_size=args.batch_size)


def cmd_acquire(args) -> dict:
    project = _open_with_overrides(args)
    selection = loop.acquire(project, _acquire_options(args, project))
    n = project.latest_round()
    m = project.manifest(n)
    document = {"round": n, "strategy": m["strategy"], "selected": selection.num_rows,
                "ids": selection.column("id").to_pylist(), "timings": m["timings"], "warnings": m.get("warnings", [])}
    if not getattr(args, "in_round", False):
        result(document)
    say(f"round {n}: selected {selection.num_rows} images with {m['strategy']} in "
        f"{m['timings'].get('total_s', 0):.1f} s; next: export them for labeling (`raydm2 export`)")
    for warning in m.get("warnings", []):
        say(f"warning: {warning}")
    return document


def cmd_requery(args) -> None:
    project = _open_with_overrides(args)
    selection, where = loop.requery(project, _acquire_options(args, project))
    result({"ranked": selection.num_rows, "where": where, "ids": selection.column("id").to_pylist()},
           f"requery: ranked {selection.num_rows} images into {where}")


def cmd_round(args) -> None:
    project = _open_with_overrides(args)
    args.in_round = True
    with project.writing():
        trained = cmd_train(args)
        acquired = cmd_acquire(args)
    result({"trained": trained, **acquired})


def cmd_simulate(args) -> None:
    from raydm2.runtime import connect
    from raydm2.service.simulate import SimulationPlan, simulate

    data = _settings(args)
    data.setdefault("name", "simulation")
    base = validate_config(data, source="simulation settings")
    for name, value in (("--initial", args.initial), ("--per-round", args.per_round), ("--rounds", args.rounds)):
        if value <= 0:
            raise RayDM2Error(f"{name} must be positive, got {value}")
    plan = SimulationPlan(base=base, strategies=tuple(args.strategies), seeds=tuple(args.seeds),
                          initial=args.initial, per_round=args.per_round, rounds=args.rounds, engine=args.engine,
                          seed_strategy=args.seed_strategy)
    if args.engine == "ray":
        connect()
    report = simulate(plan, args.out, title=args.title or f"{base.pool} ({', '.join(plan.strategies)})",
                      records=args.records)
    for name, s in sorted(report["summary"].items(), key=lambda kv: -kv[1]["aubc"]["mean"]):
        say(f"{name:18s} AUBC {s['aubc']['mean']:.4f} ± {s['aubc']['std']:.4f}   final accuracy "
              f"{s['final_accuracy']['mean']:.4f} ± {s['final_accuracy']['std']:.4f}")
    say(f"wrote {args.out}/results.html (open it in a browser), results.json, results.md, curves.png; records in "
        f"{report['records']}")


