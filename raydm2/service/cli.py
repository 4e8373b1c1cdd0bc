"""`raydm2` command line: parses arguments, calls the commands, maps errors to exit codes.

Exit codes: 0 success, 2 a refused input or state (message on stderr, nothing changed), 1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import errno
import sys

from raydm2 import __version__
from raydm2.acquisition import strategies
from raydm2.errors import RayDM2Error
from raydm2.ledger.presets import PRESETS
from raydm2.service import console, demo
from raydm2.service.commands import (cmd_acquire, cmd_export, cmd_ingest, cmd_init, cmd_label, cmd_report,
                                     cmd_pretrain, cmd_requery, cmd_round, cmd_schedule, cmd_seed, cmd_simulate,
                                     cmd_status, cmd_train)


def build_parser() -> argparse.ArgumentParser:
    # --quiet / --verbose work before or after the command; SUPPRESS keeps a command's parser from resetting a flag
    # given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print errors only (for cron)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show Ray's own logs and progress bars (or RAYDM2_LOG=debug)")
    parser = argparse.ArgumentParser(prog="raydm2", description="Large-pool active learning with DM2 on Ray",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"raydm2 {__version__}")
    parser.set_defaults(quiet=False, verbose=False, json=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else there")

    p = add("ingest", help="write a pool (Parquet) from a dataset in its original format")
    fmts = p.add_subparsers(dest="format", required=True)
    for name in ("mnist", "fashion_mnist"):
        q = fmts.add_parser(name, parents=[common], help=f"{name} folder of idx .gz files -> OUT/train and OUT/test pools")
        q.add_argument("--root", required=True)
        q.add_argument("--out", required=True)
    q = fmts.add_parser("idx", parents=[common], help="one idx images file (+ labels file) -> pool")
    q.add_argument("--images", required=True)
    q.add_argument("--labels")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("cifar_npz", parents=[common], help="npz with x_train/y_train/x_test/y_test -> OUT/train and OUT/test")
    q.add_argument("--path", required=True)
    q.add_argument("--out", required=True)
    q = fmts.add_parser("cifar_batches", parents=[common], help="CIFAR-10 python batch files -> pool")
    q.add_argument("files", nargs="+")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("folder", parents=[common], help="root/<class>/*.png|jpg (labelled) or a flat folder -> pool")
    q.add_argument("--root", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="read the files with Ray Data tasks (default: from 100,000 files)")
    q = fmts.add_parser("numpy", parents=[common], help=".npy uint8 images (+ .npy labels) -> pool")
    q.add_argument("--images", required=True)
    q.add_argument("--labels")
    q.add_argument("--out", required=True)
    q = fmts.add_parser("sample", parents=[common], help="the real sample shipped with raydm2 -> OUT/mnist/{train,test}, OUT/cifar10/...")
    q.add_argument("--out", required=True)
    p.set_defaults(func=cmd_ingest)

    p = add("init", help="create a project (validated project.yaml)")
    p.add_argument("--project", required=True)
    p.add_argument("--pool")
    p.add_argument("--test-pool")
    p.add_argument("--name")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--config", help="a YAML file of settings, merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. strategy.budget=50")
    p.set_defaults(func=cmd_init)

    p = add("seed", help="round 0: a seeded random initial selection")
    p.add_argument("--project", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--strategy", choices=["random", "typiclust"], default="random",
                   help="typiclust: the most typical image of each of N clusters of the initial model's features")
    p.set_defaults(func=cmd_seed)

    p = add("export", help="write a round's selection for annotators (CSV, JSONL, Label Studio)")
    p.add_argument("--project", required=True)
    p.add_argument("--round", type=int)
    p.add_argument("--format", choices=["csv", "jsonl", "labelstudio"], default="csv")
    p.add_argument("--out", required=True, help="output file; images go to <out stem>_images/")
    p.add_argument("--url-prefix", help="reference images by this URL prefix instead of local paths")
    p.set_defaults(func=cmd_export)

    p = add("label", help="import labels for a round's selection")
    p.add_argument("--project", required=True)
    p.add_argument("--round", type=int)
    p.add_argument("--file", help="CSV (id,label), JSONL, or a Label Studio export (JSON, JSON-MIN, CSV, TSV)")
    p.add_argument("--format", choices=["csv", "jsonl", "labelstudio"], help="default: from the file extension")
    p.add_argument("--oracle", action="store_true", help="ground truth from the pool's label column (simulation)")
    p.add_argument("--allow-unselected", action="store_true")
    p.add_argument("--from-name", default="label",
                   help="Label Studio: the name of the Choices tag in the labeling config (default: label)")
    p.set_defaults(func=cmd_label)

    for name, func, text in (
        ("train", cmd_train, "train DM2-AT on Ray Train with every label so far"),
        ("acquire", cmd_acquire, "select the next batch with the latest trained checkpoint"),
        ("round", cmd_round, "train on the current labels, then acquire the next batch"),
        ("requery", cmd_requery, "re-rank the current pool with the latest checkpoint (no new round)"),
    ):
        p = add(name, help=text)
        p.add_argument("--project", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting for this run, e.g. strategy.knn.k=5")
        if name in ("train", "round"):
            p.add_argument("--round", type=int, help="round to train (default: the latest labeled)")
        json_flag(p)
        if name != "train":
            p.add_argument("--actors", type=int, help="actor pool size (default: from free resources)")
            p.add_argument("--batch-size", type=int)
        p.set_defaults(func=func)

    p = add("schedule", help="submit the next round as a Ray job (idempotent submission ids)")
    p.add_argument("--project", required=True)
    p.add_argument("--address", help="job server, default $RAY_ADDRESS or http://127.0.0.1:8265")
    p.add_argument("--once", action="store_true", help="check and submit once (for cron)")
    p.add_argument("--every", help="keep checking at this interval, e.g. 24h")
    p.add_argument("--job", choices=["round", "requery"], default="round",
                   help="round: train + acquire once labels are in; requery: re-rank with the latest checkpoint")
    json_flag(p)
    p.set_defaults(func=cmd_schedule)

    p = add("report", help="report.html (and its PNGs): accuracy, class balance, time per stage, selection map")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True, help="folder for report.html and the PNG files")
    p.add_argument("--round", type=int, action="append", help="map these rounds (default: the latest)")
    p.add_argument("--baseline", help="a `raydm2 simulate` results.json of the same pool: its random strategy's "
                   "curve is drawn beside the project's")
    p.set_defaults(func=cmd_report)

    p = add("pretrain", help="SimCLR on a pool's images (Ray Train) -> backbone weights for model.weights")
    p.add_argument("--pool", required=True, help="the images to learn from (labels, if any, are not read)")
    p.add_argument("--out", required=True, help="the backbone's state-dict file to write (.pt)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="the model and image settings the projects will use")
    p.add_argument("--config", help="a YAML file of settings, merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. train.num_workers=2 (model.*, image.*, seed and train's workers and GPU apply)")
    p.add_argument("--epochs", type=int, help="default 20")
    p.add_argument("--batch-size", type=int, help="global batch, split across workers (default 256)")
    p.add_argument("--lr", type=float, help="SGD learning rate for a batch of 256 (default 0.06)")
    p.add_argument("--temperature", type=float, help="NT-Xent temperature (default 0.5)")
    p.add_argument("--runs", help="Ray Train storage, where a re-run resumes (default: pretrain_runs/ beside --out)")
    p.set_defaults(func=cmd_pretrain, test_pool=None)

    p = add("simulate", help="active-learning runs with oracle labels: strategies x seeds -> AUBC")
    p.add_argument("--out", required=True, help="folder for records/, runs/ (scratch), results.json, results.md, "
                   "curves.png")
    p.add_argument("--records", help="finished runs' records, resumed from (default: OUT/records)")
    p.add_argument("--pool", required=True, help="a pool with a label column (the oracle)")
    p.add_argument("--test-pool", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--config", help="a YAML file of settings, merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. train.epochs=20")
    p.add_argument("--strategies", nargs="+", default=["random", "dm2"], choices=strategies.names())
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--initial", type=int, default=20, help="initial labels (resampled until all classes appear)")
    p.add_argument("--seed-strategy", choices=["random", "typiclust"], default="random",
                   help="how the initial labels are chosen (typiclust: as `raydm2 seed --strategy typiclust`)")
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--title")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray: each run is a project trained by Ray Train and acquired by the distributed pipeline; "
                        "local: the same computation in this process, for quick comparisons on small pools")
    p.set_defaults(func=cmd_simulate)

    p = add("demo", help="a complete DM2 round on a local Ray cluster over the shipped real sample")
    p.add_argument("--workdir", default="demo_project")
    p.set_defaults(func=lambda args: demo.run(args.workdir, main))

    p = add("status", help="rounds, states, label counts, accuracy and timings")
    p.add_argument("--project", required=True)
    json_flag(p)
    p.set_defaults(func=cmd_status)
    return parser


# Errors of the machine the user can act on (a read-only project, a full disk), said in one line like a refusal.
# Every write is atomic, so the file it was writing keeps its old content.
_STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                   errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG}


def main(argv: list[str] | None = None, own_process: bool | None = None) -> int:
    """Run one command. `own_process` (default: no `argv` given) says this process exists for the command, so its
    console may be filtered (see `console.setup`)."""
    args = build_parser().parse_args(argv)
    console.setup(quiet=args.quiet, verbose=args.verbose, as_json=args.json,
                  process=argv is None if own_process is None else own_process)
    try:
        args.func(args)
    except RayDM2Error as exc:
        print(f"raydm2: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"raydm2: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every write is atomic and the project lock is released on the way out, so a rerun is safe.
        print("raydm2: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
