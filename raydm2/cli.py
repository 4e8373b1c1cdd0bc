"""`raydm2` command line: parses arguments, validates config once, calls the library, maps errors to exit codes.

Exit codes: 0 success, 2 a refused input or state (message on stderr, nothing changed), 1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from raydm2 import ingest as ingest_mod
from raydm2 import loop, pool
from raydm2.config import STRATEGY_NAMES, validate_config
from raydm2.errors import RayDM2Error
from raydm2.presets import PRESETS
from raydm2.project import Project


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


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _dotted_to_nested(flat: dict) -> dict:
    nested: dict = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


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
        rows, classes = ingest_mod.ingest_folder(args.root, args.out)
        counts = {"rows": rows}
        if classes:
            print("classes (label index = position): " + ", ".join(classes))
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
        print(f"{name}: {rows} images appended")


# ---- init / seed / status ------------------------------------------------------------------------------------
def _settings(args) -> dict:
    """Project settings from --preset, then --config, then --pool/--test-pool, then --set (later wins)."""
    data: dict = {}
    if args.preset:
        data = _merge(data, PRESETS[args.preset])
    if args.config:
        with open(args.config) as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise RayDM2Error(f"malformed {args.config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise RayDM2Error(f"{args.config}: expected a mapping of settings, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    data = _merge(data, {k: v for k, v in {"pool": args.pool, "test_pool": args.test_pool}.items() if v})
    return _merge(data, _dotted_to_nested(_parse_set(args.set)))


def cmd_init(args) -> None:
    data = _settings(args)
    data.setdefault("name", args.name or os.path.basename(os.path.abspath(args.project)))
    config = validate_config(data, source="project settings")
    for uri in filter(None, (config.pool, config.test_pool)):
        pool.pool_info(uri)  # exists, has the pool columns, unique ids
    Project.create(args.project, config)
    print(f"created project {config.name!r} at {args.project}")


def cmd_seed(args) -> None:
    project = Project.open(args.project)
    selection = loop.seed(project, args.n)
    print(f"round 0: {selection.num_rows} images selected at random (seed {project.config.seed})")


def cmd_schedule(args) -> None:
    from ray.job_submission import JobSubmissionClient

    from raydm2 import schedule

    if args.once == bool(args.every):
        raise RayDM2Error("give exactly one of --once (for cron) or --every INTERVAL (e.g. 24h)")
    address = args.address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    client = JobSubmissionClient(address)
    if args.once:
        print(schedule.schedule_once(client, Project.open(args.project), args.job).reason)
    else:
        schedule.run_every(client, args.project, schedule.parse_interval(args.every), args.job)


def cmd_report(args) -> None:
    from raydm2 import report

    project = Project.open(args.project)
    for path in report.write(project, args.out, args.round):
        print(f"wrote {path}")


def cmd_demo(args) -> None:
    from raydm2 import demo

    demo.run(args.workdir)


def cmd_status(args) -> None:
    project = Project.open(args.project)
    print(f"project {project.config.name} ({project.uri}); pool {project.config.pool}")
    print(f"{'round':>5}  {'state':<10} {'strategy':<16} {'selected':>8} {'labels':>6}  {'clean':>6} {'robust':>6}  seconds")
    for n in project.round_ids():
        m = project.manifest(n)
        sel = m["counts"].get("selected", "-")
        labels = project.labels(n).num_rows
        clean = m["metrics"].get("clean_accuracy")
        robust = m["metrics"].get("robust_accuracy")
        timings = " ".join(f"{k}={v:.1f}" for k, v in m["timings"].items())
        print(
            f"{n:>5}  {m['state']:<10} {m['strategy']:<16} {sel:>8} {labels:>6}  "
            f"{'-' if clean is None else f'{clean:.3f}':>6} {'-' if robust is None else f'{robust:.3f}':>6}  {timings}"
        )
    print(f"labels in total: {project.all_labels().num_rows}")


def _open_with_overrides(args) -> Project:
    """Open the project and apply `--set` overrides for this run only (project.yaml is not rewritten)."""
    project = Project.open(args.project)
    overrides = _parse_set(getattr(args, "set", None))
    if overrides:
        project.config = project.config.with_overrides(overrides)
    return project


def cmd_label(args) -> None:
    from raydm2 import labels as labels_mod

    project = Project.open(args.project)
    n = args.round if args.round is not None else project.latest_in_state("selected", "exported", "labeled")
    if n is None:
        raise RayDM2Error("no round is waiting for labels")
    if args.oracle == bool(args.file):
        raise RayDM2Error("give either a label file (--file) or --oracle (ground truth from the pool, simulation)")
    if args.oracle:
        ids, values = labels_mod.oracle(project, n)
    else:
        from raydm2 import exchange

        ids, values = exchange.parse(args.file, project.config.classes, args.format)
    result = labels_mod.import_labels(project, n, ids, values, allow_unselected=args.allow_unselected)
    print(f"round {n}: {result['labels']} labels ({'complete' if result['complete'] else 'partial'})")


def cmd_export(args) -> None:
    from raydm2 import exchange

    project = Project.open(args.project)
    n = args.round if args.round is not None else project.latest_in_state("selected", "exported")
    if n is None:
        raise RayDM2Error("no round with a selection to export")
    count = exchange.export(project, n, args.format, args.out, args.url_prefix)
    print(f"round {n}: exported {count} items to {args.out}")


def cmd_train(args) -> None:
    project = _open_with_overrides(args)
    metrics = loop.train(project, args.round)
    print("trained: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in sorted(metrics.items()) if v is not None))


def _acquire_options(args, project: Project):
    """project.yaml's `compute` section, with --actors / --batch-size taking precedence for this run."""
    from raydm2.acquire import AcquireOptions

    compute = project.config.compute
    return AcquireOptions(actors=args.actors or compute.actors, batch_size=args.batch_size or compute.batch_size)


def cmd_acquire(args) -> None:
    project = _open_with_overrides(args)
    selection = loop.acquire(project, _acquire_options(args, project))
    n = project.latest_round()
    m = project.manifest(n)
    print(f"round {n}: selected {selection.num_rows} images with {m['strategy']}; "
          + " ".join(f"{k}={v:.1f}s" for k, v in m["timings"].items()))
    for warning in m.get("warnings", []):
        print(f"warning: {warning}")


def cmd_requery(args) -> None:
    project = _open_with_overrides(args)
    selection, where = loop.requery(project, _acquire_options(args, project))
    print(f"requery: ranked {selection.num_rows} images into {where}")


def cmd_round(args) -> None:
    project = _open_with_overrides(args)
    with project.writing():
        cmd_train(args)
        cmd_acquire(args)


def cmd_simulate(args) -> None:
    from raydm2.runtime import connect
    from raydm2.simulate import SimulationPlan, simulate

    data = _settings(args)
    data.setdefault("name", "simulation")
    base = validate_config(data, source="simulation settings")
    for name, value in (("--initial", args.initial), ("--per-round", args.per_round), ("--rounds", args.rounds)):
        if value <= 0:
            raise RayDM2Error(f"{name} must be positive, got {value}")
    plan = SimulationPlan(base=base, strategies=tuple(args.strategies), seeds=tuple(args.seeds),
                          initial=args.initial, per_round=args.per_round, rounds=args.rounds, engine=args.engine)
    if args.engine == "ray":
        connect()
    report = simulate(plan, args.out, title=args.title or f"{base.pool} ({', '.join(plan.strategies)})",
                      records=args.records)
    for name, s in sorted(report["summary"].items(), key=lambda kv: -kv[1]["aubc"]["mean"]):
        print(f"{name:18s} AUBC {s['aubc']['mean']:.4f} ± {s['aubc']['std']:.4f}   final accuracy "
              f"{s['final_accuracy']['mean']:.4f} ± {s['final_accuracy']['std']:.4f}")
    print(f"wrote {args.out}/results.json, results.md, curves.png; records in {report['records']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydm2", description="Large-pool active learning with DM2 on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="write a pool (Parquet) from a dataset in its original format")
    fmts = p.add_subparsers(dest="format", required=True)
    for name in ("mnist", "fashion_mnist"):
        q = fmts.add_parser(name, help=f"{name} folder of idx .gz files -> OUT/train and OUT/test pools")
        q.add_argument("--root", required=True)
        q.add_argument("--out", required=True)
    q = fmts.add_parser("idx", help="one idx images file (+ labels file) -> pool")
    q.add_argument("--images", required=True)
    q.add_argument("--labels")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("cifar_npz", help="npz with x_train/y_train/x_test/y_test -> OUT/train and OUT/test")
    q.add_argument("--path", required=True)
    q.add_argument("--out", required=True)
    q = fmts.add_parser("cifar_batches", help="CIFAR-10 python batch files -> pool")
    q.add_argument("files", nargs="+")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("folder", help="root/<class>/*.png|jpg (labelled) or a flat folder -> pool")
    q.add_argument("--root", required=True)
    q.add_argument("--out", required=True)
    q = fmts.add_parser("numpy", help=".npy uint8 images (+ .npy labels) -> pool")
    q.add_argument("--images", required=True)
    q.add_argument("--labels")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("sample", help="the real sample shipped with raydm2 -> OUT/mnist/{train,test}, OUT/cifar10/...")
    q.add_argument("--out", required=True)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("init", help="create a project (validated project.yaml)")
    p.add_argument("--project", required=True)
    p.add_argument("--pool")
    p.add_argument("--test-pool")
    p.add_argument("--name")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--config", help="a YAML file of settings, merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. strategy.budget=50")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("seed", help="round 0: a seeded random initial selection")
    p.add_argument("--project", required=True)
    p.add_argument("--n", type=int, required=True)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("export", help="write a round's selection for annotators (CSV, JSONL, Label Studio)")
    p.add_argument("--project", required=True)
    p.add_argument("--round", type=int)
    p.add_argument("--format", choices=["csv", "jsonl", "labelstudio"], default="csv")
    p.add_argument("--out", required=True, help="output file; images go to <out stem>_images/")
    p.add_argument("--url-prefix", help="reference images by this URL prefix instead of local paths")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("label", help="import labels for a round's selection")
    p.add_argument("--project", required=True)
    p.add_argument("--round", type=int)
    p.add_argument("--file", help="CSV (id,label), JSONL, or a Label Studio JSON export")
    p.add_argument("--format", choices=["csv", "jsonl", "labelstudio"], help="default: from the file extension")
    p.add_argument("--oracle", action="store_true", help="ground truth from the pool's label column (simulation)")
    p.add_argument("--allow-unselected", action="store_true")
    p.set_defaults(func=cmd_label)

    for name, func, text in (
        ("train", cmd_train, "train DM2-AT on Ray Train with every label so far"),
        ("acquire", cmd_acquire, "select the next batch with the latest trained checkpoint"),
        ("round", cmd_round, "train on the current labels, then acquire the next batch"),
        ("requery", cmd_requery, "re-rank the current pool with the latest checkpoint (no new round)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--project", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting for this run, e.g. strategy.knn.k=5")
        if name in ("train", "round"):
            p.add_argument("--round", type=int, help="round to train (default: the latest labeled)")
        if name != "train":
            p.add_argument("--actors", type=int, help="actor pool size (default: from free resources)")
            p.add_argument("--batch-size", type=int)
        p.set_defaults(func=func)

    p = sub.add_parser("schedule", help="submit the next round as a Ray job (idempotent submission ids)")
    p.add_argument("--project", required=True)
    p.add_argument("--address", help="job server, default $RAY_ADDRESS or http://127.0.0.1:8265")
    p.add_argument("--once", action="store_true", help="check and submit once (for cron)")
    p.add_argument("--every", help="keep checking at this interval, e.g. 24h")
    p.add_argument("--job", choices=["round", "requery"], default="round",
                   help="round: train + acquire once labels are in; requery: re-rank with the latest checkpoint")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("report", help="PNG plots: accuracy vs labels, time per stage, selection map")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--round", type=int, action="append", help="map these rounds (default: the latest)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="active-learning runs with oracle labels: strategies x seeds -> AUBC")
    p.add_argument("--out", required=True, help="folder for records/, runs/ (scratch), results.json, results.md, "
                   "curves.png")
    p.add_argument("--records", help="finished runs' records, resumed from (default: OUT/records)")
    p.add_argument("--pool", required=True, help="a pool with a label column (the oracle)")
    p.add_argument("--test-pool", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--config", help="a YAML file of settings, merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. train.epochs=20")
    p.add_argument("--strategies", nargs="+", default=["random", "dm2"], choices=list(STRATEGY_NAMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--initial", type=int, default=20, help="initial labels (resampled until all classes appear)")
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--title")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray: each run is a project trained by Ray Train and acquired by the distributed pipeline; "
                        "local: the same computation in this process, for quick comparisons on small pools")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="a complete DM2 round on a local Ray cluster over the shipped real sample")
    p.add_argument("--workdir", default="demo_project")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="rounds, states, label counts, accuracy and timings")
    p.add_argument("--project", required=True)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RayDM2Error as exc:
        print(f"raydm2: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
