"""Real pools and pretrained models (issue #20).

    python benchmarks/real_pools_bench.py throughput --data-root ../shared/data    # -> results/real_pools.json
    python benchmarks/real_pools_bench.py pretrained --data-root ../shared/data    # -> results/real_pools_pretrained.json
    python benchmarks/real_pools_bench.py cold_start --data-root ../shared/data    # -> results/cold_start.json

throughput: 2,000 JPEGs of mixed sizes (CIFAR-10 images resized to 240-640 px, a tenth grey) as an image folder,
acquired at 224x224 by `torchvision/resnet18` with DM2 through the Ray engine: images/s for embedding and for
mix+score, and how much of a single process's time decoding and resizing take beside the forward pass.

pretrained: does a pretrained backbone change which strategy wins? The pool is MNIST digits 0-4 (5,000 seeded
images of train, tested on t10k's 0-4); the backbone is the small CNN trained here on 10,000 images of the other
digits, 5-9 (disjoint classes: no test image's class was seen), loaded by `model.weights`. random, margin, badge
and dm2 run from scratch and from that backbone, 3 seeds each, with the local engine.

cold_start: the same two starts and a third, the small CNN after `raydm2 pretrain` (SimCLR on the pool's own 5,000
images, no labels; Ray Train on the embedded cluster), with the same seeds; round 0 chosen by TypiClust on the
initial model's features (`raydm2 seed --strategy typiclust`) against the random, class-covering round 0 of
`pretrained` (whose records it resumes): first-round accuracy and AUBC of random, margin and dm2 afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import save  # noqa: E402


def _photos(data_root: str, folder: str, n: int) -> None:
    from PIL import Image

    data = np.load(os.path.join(data_root, "cifar10", "cifar10_subset.npz"))
    x, y = data["x_train"], data["y_train"].reshape(-1)
    rng = np.random.default_rng(0)
    for k in range(n):
        side = int(rng.integers(240, 641))
        img = Image.fromarray(x[k % len(x)]).resize((side, int(side * rng.uniform(0.75, 1.33))), Image.BICUBIC)
        if k % 10 == 0:
            img = img.convert("L")
        os.makedirs(os.path.join(folder, str(int(y[k % len(y)]))), exist_ok=True)
        img.save(os.path.join(folder, str(int(y[k % len(y)])), f"{k:05d}.jpg"), quality=90)


def throughput(args) -> None:
    import shutil

    import torch

    from raydm2 import runtime
    from raydm2.data import folder, pool
    from raydm2.data.images import decode, to_tensor
    from raydm2.ledger.config import ProjectConfig
    from raydm2.ledger.project import Project
    from raydm2.models import checkpoint
    from raydm2.models.registry import build
    from raydm2.service import loop

    work = tempfile.mkdtemp(prefix="real-pools-", dir=args.workdir)
    _photos(args.data_root, os.path.join(work, "photos"), args.images)
    folder.ingest_folder(os.path.join(work, "photos"), os.path.join(work, "pool"))
    config = ProjectConfig(name="photos", pool=os.path.join(work, "pool"), classes=[str(i) for i in range(10)],
                           image={"size": 224, "channels": 3}, model={"arch": "torchvision/resnet18"},
                           strategy={"name": "dm2", "budget": 100})
    project = Project.create(os.path.join(work, "project"), config)
    loop.seed(project, 100)
    loop.label(project, oracle=True)
    spec = config.model_spec()
    torch.manual_seed(0)  # throughput does not depend on the weights: an untrained network stands in
    with project.writing():
        checkpoint.save(build(spec), spec, project.checkpoint_dir(0))
        project.update(0, state="trained")
    runtime.connect()
    started = time.perf_counter()
    loop.acquire(project)
    total = time.perf_counter() - started
    m = project.manifest(1)
    rows = m["counts"]["candidates"]

    # One process, one thread per core: decode+resize against the forward pass, on the same images.
    blobs = pool.read_columns(config.pool, ["image"]).column(0).to_pylist()[:200]
    t0 = time.perf_counter()
    pixels = np.stack([decode(b, config.image_spec()) for b in blobs])
    decode_s = time.perf_counter() - t0
    model = build(spec).eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for s in range(0, len(pixels), 50):
            model(to_tensor(pixels[s:s + 50]))
        forward_s = time.perf_counter() - t0
    save("real_pools", {
        "command": "python benchmarks/real_pools_bench.py throughput --data-root ../shared/data",
        "images": args.images, "image_size": 224, "model": "torchvision/resnet18", "strategy": "dm2",
        "candidates": rows, "timings_s": m["timings"], "acquire_total_s": round(total, 1),
        "embed_images_per_s": round(rows / m["timings"]["embed_s"], 1),
        "mix_score_images_per_s": round(rows / m["timings"]["mix_score_s"], 1),
        "single_process_decode_share": round(decode_s / (decode_s + forward_s), 3),
        "single_process_sample": {"images": len(blobs), "decode_s": round(decode_s, 2),
                                  "forward_s": round(forward_s, 2)},
    })
    shutil.rmtree(work, ignore_errors=True)


def _digits(data_root: str, split: str, digits: range, limit: int | None, seed: int):
    from raydm2.data import ingest

    prefix = "train" if split == "train" else "t10k"
    x, y = ingest.load_idx_pair(os.path.join(data_root, "mnist", f"{prefix}-images-idx3-ubyte.gz"),
                                os.path.join(data_root, "mnist", f"{prefix}-labels-idx1-ubyte.gz"))
    keep = np.flatnonzero(np.isin(y, list(digits)))
    if limit:
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    return x[keep], (y[keep] - digits.start).astype(np.int64)


def _pretrain(x, y, path: str) -> str:
    """The small CNN, supervised on digits 5-9, saved as a raydm2 checkpoint (its body is what transfers)."""
    import torch
    import torch.nn.functional as F

    from raydm2.data.images import to_tensor
    from raydm2.models import checkpoint
    from raydm2.models.registry import ModelSpec, build

    torch.manual_seed(0)
    spec = ModelSpec("small_cnn", 5, 1, 28)
    model = build(spec)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(to_tensor(x[idx.numpy()][..., None])), torch.from_numpy(y[idx.numpy()]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    checkpoint.save(model, spec, path)
    return os.path.join(path, checkpoint.WEIGHTS)


def _setup(args) -> tuple[str, dict, str]:
    from raydm2.data import pool

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    pools = {}
    for name, split, digits, limit in (("pool", "train", range(0, 5), 5000), ("test", "test", range(0, 5), None)):
        pools[name] = os.path.join(work, f"mnist04_{name}")
        if not os.path.exists(pools[name]):
            x, y = _digits(args.data_root, split, digits, limit, seed=1)
            pool.append_arrays(pools[name], x, y, f"mnist:{split}:0-4")
    weights = os.path.join(work, "backbone_5to9", "model.pt")
    if not os.path.exists(weights):
        _pretrain(*_digits(args.data_root, "train", range(5, 10), 10000, seed=2), os.path.dirname(weights))
    return work, pools, weights


def _simclr(work: str, pools: dict, epochs: int) -> str:
    """The small CNN's body after `raydm2 pretrain` on the pool's images (labels unread), made once per epochs."""
    from raydm2.ledger.config import PretrainSettings, merge_settings, validate_config
    from raydm2.ledger.presets import PRESETS
    from raydm2.runtime import connect
    from raydm2.training.pretrain import pretrain

    out = os.path.join(work, f"simclr_{epochs}epochs", "simclr.pt")
    if not os.path.exists(out):
        connect(include_dashboard=False)
        config = validate_config(merge_settings(PRESETS["mnist"], {
            "name": "simclr", "pool": pools["pool"], "classes": [str(i) for i in range(5)],
            "model": {"arch": "small_cnn"}}))
        pretrain(config, PretrainSettings(epochs=epochs), out, os.path.join(work, "pretrain_runs"))
    return out


def _simulate(work: str, pools: dict, model: dict, start: str, strategies, seeding: str = "random") -> dict:
    from raydm2.ledger.config import merge_settings, validate_config
    from raydm2.ledger.presets import PRESETS
    from raydm2.service.simulate import SimulationPlan, simulate

    data = merge_settings(PRESETS["mnist"], {"name": f"pre-{start}", "pool": pools["pool"],
                                             "test_pool": pools["test"], "classes": [str(i) for i in range(5)],
                                             "model": {"arch": "small_cnn", **model}})
    plan = SimulationPlan(base=validate_config(data), strategies=tuple(strategies), seeds=(0, 1, 2), initial=10,
                          per_round=10, rounds=8, engine="local", seed_strategy=seeding)
    folder = f"sim-{start}" if seeding == "random" else f"sim-{start}-{seeding}"
    return simulate(plan, os.path.join(work, folder), title=f"MNIST 0-4 from {start}, {seeding} round 0",
                    records=os.path.join(work, f"sim-{start}", "records") if seeding == "random" else None)


def cold_start(args) -> None:
    work, pools, weights = _setup(args)
    simclr = _simclr(work, pools, args.ssl_epochs)
    out = {"command": "python benchmarks/real_pools_bench.py cold_start --data-root ../shared/data",
           "pool": "MNIST train digits 0-4, 5,000 seeded images; test: t10k digits 0-4",
           "backbone": "small_cnn supervised on 10,000 MNIST train images of digits 5-9, 3 epochs",
           "simclr": f"small_cnn after raydm2 pretrain on the pool's 5,000 images (no labels), {args.ssl_epochs} "
                     "epochs, batch 256, the library's other defaults",
           "initial": 10, "per_round": 10, "rounds": 8, "seeds": [0, 1, 2], "engine": "local", "results": {}}
    for start, model in (("scratch", {}), ("pretrained", {"weights": weights}), ("simclr", {"weights": simclr})):
        for seeding in ("random", "typiclust"):
            report = _simulate(work, pools, model, start, ("random", "margin", "dm2"), seeding)
            out["results"].setdefault(start, {})[seeding] = {
                name: {"first_round_accuracy": {"mean": float(np.mean(first)), "std": float(np.std(first, ddof=1))},
                       "aubc": s["aubc"]}
                for name, s in report["summary"].items()
                for first in [[r["rounds"][0]["clean_accuracy"] for r in report["runs"] if r["strategy"] == name]]}
    save("cold_start", out)


def pretrained(args) -> None:
    work, pools, weights = _setup(args)
    strategies = ("random", "margin", "badge", "dm2")
    out = {"command": "python benchmarks/real_pools_bench.py pretrained --data-root ../shared/data",
           "pool": "MNIST train digits 0-4, 5,000 seeded images; test: t10k digits 0-4",
           "backbone": "small_cnn supervised on 10,000 MNIST train images of digits 5-9, 3 epochs",
           "initial": 10, "per_round": 10, "rounds": 8, "seeds": [0, 1, 2], "engine": "local", "results": {}}
    for start, model in (("scratch", {}), ("pretrained", {"weights": weights})):
        report = _simulate(work, pools, model, start, strategies)
        out["results"][start] = {name: {"aubc": s["aubc"], "final_accuracy": s["final_accuracy"]}
                                 for name, s in report["summary"].items()}
        out["results"][start]["ranking"] = sorted(strategies, key=lambda n: -report["summary"][n]["aubc"]["mean"])
    save("real_pools_pretrained", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("throughput", "pretrained", "cold_start"):
        p = sub.add_parser(name)
        p.add_argument("--data-root", required=True)
        p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raydm2-real-pools"))
        if name == "throughput":
            p.add_argument("--images", type=int, default=2000)
        if name == "cold_start":
            p.add_argument("--ssl-epochs", type=int, default=20, help="raydm2 pretrain's epochs on the pool")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    {"throughput": throughput, "pretrained": pretrained, "cold_start": cold_start}[args.what](args)


if __name__ == "__main__":
    main()
