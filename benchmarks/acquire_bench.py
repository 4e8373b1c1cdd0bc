"""Acquisition benchmarks (SPEC section 8): floor ratio, kNN recall and speed-up, and scale.

    python benchmarks/acquire_bench.py floor --data-root ../shared/data --arch resnet18
    python benchmarks/acquire_bench.py floor --data-root ../shared/data --arch small_cnn
    python benchmarks/acquire_bench.py knn   --data-root ../shared/data
    python benchmarks/acquire_bench.py scale --sizes 10000 100000 1000000
    python benchmarks/acquire_bench.py startup --data-root ../shared/data

Each writes benchmarks/results/acquire_<part>.json; `summary` merges the headline keys into acquire.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common as C  # noqa: E402


def _config(pool_uri: str, arch: str, channels: int, size: int, budget: int, batch: int, **knn):
    from raydm2.ledger.config import ProjectConfig

    return ProjectConfig(name="bench", pool=pool_uri, classes=[str(i) for i in range(10)],
                         model={"arch": arch}, image={"size": size, "channels": channels},
                         strategy={"budget": budget, "knn": knn}, compute={"batch_size": batch})


def floor(args) -> dict:
    """floor = 2 x one plain inference_mode pass over the same pool, same model and batch size, images
    already decoded in memory, one process; ratio = the pipeline's total acquisition time / floor."""
    import torch

    from raydm2.models import checkpoint
    from raydm2 import runtime
    from raydm2.acquisition import AcquireOptions, acquire
    from raydm2.data.images import ImageSpec, to_tensor
    from raydm2.models.registry import ModelSpec
    from raydm2.acquisition.local_engine import load_pool

    work = tempfile.mkdtemp(prefix="floor-")
    pool_uri = C.mnist_pool(args.data_root, args.workdir or work, args.n)
    ckpt = C.random_checkpoint(args.arch, 1, 28, os.path.join(work, "ckpt"))
    spec = ModelSpec(args.arch, 10, 1, 28)
    ids, pixels, _ = load_pool(pool_uri, ImageSpec(28, 1))
    model = checkpoint.load(ckpt, spec).eval()
    torch.set_num_threads(os.cpu_count())
    with torch.inference_mode():
        model(to_tensor(pixels[: args.batch]))  # warm-up
        t = time.perf_counter()
        for s in range(0, len(pixels), args.batch):
            model(to_tensor(pixels[s:s + args.batch]))
        one_pass = time.perf_counter() - t
    del pixels
    runtime.connect(include_dashboard=False)
    cfg = _config(pool_uri, args.arch, 1, 28, 100, args.batch)
    total, result = C.seconds(acquire, cfg.acquire_request(ckpt, 1, np.empty(0, np.int64)),
                              AcquireOptions(batch_size=args.batch))
    floor_s = 2 * one_pass
    out = {"arch": args.arch, "images": len(ids), "batch_size": args.batch, "one_pass_s": one_pass,
           "floor_s": floor_s, "acquire_total_s": total, "floor_ratio": total / floor_s, **C.per_stage(result)}
    C.save(f"acquire_floor_{args.arch}", out)
    return out


def _embed_real_images(data_root: str, n_target: int) -> np.ndarray:
    """Penultimate features of real images: MNIST + Fashion-MNIST (train and test), topped up with 1-pixel
    shifted MNIST copies to reach n_target. The model is a small CNN trained for one epoch on MNIST so the
    features are clustered as real embeddings are."""
    import torch
    import torch.nn.functional as F

    from raydm2.data.images import to_tensor
    from raydm2.data.ingest import read_idx
    from raydm2.models.registry import ModelSpec, build

    parts = []
    for ds in ("mnist", "fashion_mnist"):
        for split in ("train", "t10k"):
            parts.append(read_idx(os.path.join(data_root, ds, f"{split}-images-idx3-ubyte.gz")))
    mnist = parts[0]
    labels = read_idx(os.path.join(data_root, "mnist", "train-labels-idx1-ubyte.gz")).astype(np.int64)
    images = np.concatenate(parts)
    shift = 1
    while len(images) < n_target:
        images = np.concatenate([images, C.shifted(mnist, shift, 0)[: n_target - len(images)]])
        shift += 1
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    model = build(ModelSpec("small_cnn", 10, 1, 28))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for s in range(0, 60_000, 128):
        loss = F.cross_entropy(model(to_tensor(mnist[s:s + 128, :, :, None])), torch.from_numpy(labels[s:s + 128]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    feats = []
    with torch.inference_mode():
        for s in range(0, len(images), 2048):
            feats.append(model.features(to_tensor(images[s:s + 2048, :, :, None])).numpy())
    return np.concatenate(feats)[:n_target]


def knn_bench(args) -> dict:
    import faiss

    from raydm2.acquisition.mixing import unit
    from raydm2.acquisition.knn import ExactIndex, build_ivf, default_ivf_params

    faiss.omp_set_num_threads(os.cpu_count())
    z = unit(_embed_real_images(args.data_root, args.n))
    n = len(z)
    ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(n, args.queries, replace=False))
    exact_s, (exact_i, _) = C.seconds(ExactIndex(ids, z, 0.5).search, ids[queries], z[queries], 10)
    rows = []
    best = None
    # nprobe is a search setting: one index, searched at each nprobe.
    built = default_ivf_params(n, 10, None, None, 8, 100_000)
    build_s, index = C.seconds(build_ivf, lambda: iter([(ids, z)]), n, built, 0.5, 0, 1)
    for nprobe in args.nprobe:
        params = default_ivf_params(n, 10, None, nprobe, 8, 100_000)
        index.params = params
        search_s, (got_i, _) = C.seconds(index.search, ids[queries], z[queries], 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, exact_i)]))
        row = {"nlist": params.nlist, "nprobe": params.nprobe, "shortlist": params.shortlist, "build_s": build_s,
               "search_s": search_s, "recall_at_10": recall, "speedup": exact_s / search_s}
        rows.append(row)
        print(row, flush=True)
        if recall >= 0.98 and (best is None or row["speedup"] > best["speedup"]):
            best = row
    best = best or max(rows, key=lambda r: r["recall_at_10"])
    out = {"embeddings": n, "queries": args.queries, "exact_s": exact_s, "sweep": rows,
           "recall_at_10": best["recall_at_10"], "knn_speedup": best["speedup"], "chosen": best,
           "default": {"nlist": built.nlist, "nprobe": built.nprobe}}
    C.save(args.name, out)
    return out


def _synthetic_pool(path: str, n: int) -> None:
    """Synthetic 28x28 images: random strokes on black, PNG-encoded like real pools."""
    from raydm2.data import pool

    rng = np.random.default_rng(n)
    chunk = 50_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        img = np.zeros((m, 28, 28), np.uint8)
        for _ in range(3):
            r = rng.integers(4, 24, (m, 2))
            for d in range(-2, 3):
                img[np.arange(m), np.clip(r[:, 0] + d, 0, 27), :] = np.maximum(
                    img[np.arange(m), np.clip(r[:, 0] + d, 0, 27), :], rng.integers(0, 255, (m, 28), dtype=np.uint8))
        pool.append_arrays(path, img, None, "synthetic")


def scale_one(args) -> dict:
    """One pool size, in its own process so the driver's peak RSS belongs to this size alone."""
    from raydm2 import runtime
    from raydm2.acquisition import AcquireOptions, acquire

    work = args.workdir
    pool_uri = os.path.join(work, f"synthetic_{args.n}")
    if not os.path.exists(pool_uri):
        _synthetic_pool(pool_uri, args.n)
    ckpt = C.random_checkpoint("small_cnn", 1, 28, os.path.join(work, "ckpt"))
    runtime.connect(include_dashboard=False)
    rss_before = C.PeakRSS.mib()
    request = _config(pool_uri, "small_cnn", 1, 28, 1000, 512).acquire_request(ckpt, 1, np.empty(0, np.int64))
    total, result = C.seconds(acquire, request, AcquireOptions(batch_size=512))
    out = {"images": args.n, "total_s": total, "s_per_image": total / args.n,
           "driver_peak_rss_mib": C.PeakRSS.mib(), "driver_rss_before_mib": rss_before, **C.per_stage(result)}
    print("SCALE_RESULT " + json.dumps(out, default=float), flush=True)
    return out


def scale(args) -> dict:
    rows = []
    work = args.workdir or tempfile.mkdtemp(prefix="scale-")
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "scale-one", "--n", str(n), "--workdir", work],
                              capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("SCALE_RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"scale run for {n} failed")
        rows.append(json.loads(line[0].split(" ", 1)[1]))
        print(rows[-1], flush=True)
    by_n = {r["images"]: r for r in rows}
    out = {"runs": rows}
    if 100_000 in by_n and 1_000_000 in by_n:
        out["rss_ratio_1e6_1e5"] = by_n[1_000_000]["driver_peak_rss_mib"] / by_n[100_000]["driver_peak_rss_mib"]
    C.save("acquire_scale", out)
    return out


def startup(args) -> dict:
    """A small acquisition is mostly fixed cost. Times whole DM2 acquisitions of an `--n`-image pool on a warm
    embedded cluster (after one untimed warm-up acquisition that starts the cluster's workers), as raydm2 runs them;
    with `--compare-readers`, Ray Data's Parquet reader V1 (what runtime.connect selects) against V2 (Ray 2.60's
    default), alternating. Each of the two keeps the other's figures in the file."""
    import ray.data

    from raydm2 import runtime
    from raydm2.acquisition import acquire

    work = tempfile.mkdtemp(prefix="startup-")
    pool_uri = C.mnist_pool(args.data_root, args.workdir or work, args.n)
    ckpt = C.random_checkpoint("small_cnn", 1, 28, os.path.join(work, "ckpt"))
    runtime.connect(include_dashboard=False)
    cfg = _config(pool_uri, "small_cnn", 1, 28, 25, 256, mode="exact")
    ctx = ray.data.DataContext.get_current()
    request = cfg.acquire_request(ckpt, 1, np.empty(0, np.int64))
    acquire(request)
    readers = ("v2", "v1") if args.compare_readers else ("default",)
    runs = {reader: [] for reader in readers}
    for _ in range(args.repeats):
        for reader in readers:
            if reader != "default":
                ctx.use_datasource_v2 = reader == "v2"
            total, result = C.seconds(acquire, request)
            runs[reader].append({"total_s": total, **result.timings})
            print(reader, json.dumps(runs[reader][-1]), flush=True)
    medians = {r: float(np.median([x["total_s"] for x in xs])) for r, xs in runs.items()}
    previous = C.previous("acquire_startup")
    if args.compare_readers:
        out = {**previous, "reader_comparison": {"images": args.n, "repeats": args.repeats, "runs": runs,
                                                 **{f"{r}_median_total_s": m for r, m in medians.items()},
                                                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    else:
        out = {"images": args.n, "repeats": args.repeats, "runs": runs["default"],
               "median_total_s": medians["default"],
               **{k: previous[k] for k in ("reader_comparison", "before") if k in previous}}
    C.save("acquire_startup", out)
    return out


def summary(args) -> dict:
    resnet, small, knn, sc = (C.previous(name) for name in ("acquire_floor_resnet18", "acquire_floor_small_cnn",
                                                            "acquire_knn", "acquire_scale"))
    out = {"floor_ratio": resnet.get("floor_ratio"), "floor_ratio_small_cnn": small.get("floor_ratio"),
           "recall_at_10": knn.get("recall_at_10"), "knn_speedup": knn.get("knn_speedup"),
           "rss_ratio_1e6_1e5": sc.get("rss_ratio_1e6_1e5"),
           "details": {"floor_resnet18": resnet, "floor_small_cnn": small, "knn": knn, "scale": sc}}
    C.save("acquire", out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    q = sub.add_parser("floor")
    q.add_argument("--data-root", default="../shared/data")
    q.add_argument("--arch", default="resnet18")
    q.add_argument("--n", type=int, default=50_000)
    q.add_argument("--batch", type=int, default=256)
    q.add_argument("--workdir")
    q.set_defaults(func=floor)
    q = sub.add_parser("knn")
    q.add_argument("--data-root", default="../shared/data")
    q.add_argument("--n", type=int, default=200_000)
    q.add_argument("--queries", type=int, default=2000)
    q.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    q.add_argument("--name", default="acquire_knn", help="results/NAME.json")
    q.set_defaults(func=knn_bench)
    q = sub.add_parser("scale")
    q.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    q.add_argument("--workdir")
    q.set_defaults(func=scale)
    q = sub.add_parser("scale-one")
    q.add_argument("--n", type=int, required=True)
    q.add_argument("--workdir", required=True)
    q.set_defaults(func=scale_one)
    q = sub.add_parser("startup")
    q.add_argument("--data-root", default="../shared/data")
    q.add_argument("--n", type=int, default=2000)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--workdir")
    q.add_argument("--compare-readers", action="store_true")
    q.set_defaults(func=startup)
    q = sub.add_parser("summary")
    q.set_defaults(func=summary)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
