"""Acquisition benchmarks (SPEC section 8): floor ratio, kNN recall and speed-up, and scale.

    python benchmarks/acquire_bench.py floor --data-root ../shared/data --arch resnet18
    python benchmarks/acquire_bench.py floor --data-root ../shared/data --arch small_cnn
    python benchmarks/acquire_bench.py knn   --data-root ../shared/data
    python benchmarks/acquire_bench.py scale --sizes 10000 100000 1000000
    python benchmarks/acquire_bench.py startup --data-root ../shared/data
    python benchmarks/acquire_bench.py index --n 10000000 --dim 128   (-> results/index_scale.json)

Each writes benchmarks/results/acquire_<part>.json; `summary` merges the headline keys into acquire.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common as C  # noqa: E402


def _config(pool_uri: str, arch: str, channels: int, size: int, budget: int, batch: int, use_gpu: bool | None = None,
            **knn):
    from raydm2.ledger.config import ProjectConfig

    return ProjectConfig(name="bench", pool=pool_uri, classes=[str(i) for i in range(10)],
                         model={"arch": arch}, image={"size": size, "channels": channels},
                         strategy={"budget": budget, "knn": knn}, compute={"batch_size": batch, "use_gpu": use_gpu})


def floor(args) -> dict:
    """floor = 2 x one plain inference_mode pass over the same pool, same model and batch size, images
    already decoded in memory, one process (on the GPU with --gpu); ratio = the pipeline's total acquisition
    time / floor. The pool's 28x28 images are resized to --size with --channels, as a project would."""
    import torch

    from raydm2.models import checkpoint
    from raydm2 import runtime
    from raydm2.acquisition import AcquireOptions, acquire
    from raydm2.data.images import ImageSpec, to_tensor
    from raydm2.models.device import select_device
    from raydm2.models.registry import ModelSpec
    from raydm2.acquisition.local_engine import load_pool

    work = tempfile.mkdtemp(prefix="floor-")
    if args.synthetic:
        pool_uri = os.path.join(args.workdir or work, f"synthetic_{args.n}")
        if not os.path.exists(pool_uri):
            _synthetic_pool(pool_uri, args.n)
    else:
        pool_uri = C.mnist_pool(args.data_root, args.workdir or work, args.n)
    ckpt = C.random_checkpoint(args.arch, args.channels, args.size, os.path.join(work, "ckpt"))
    spec = ModelSpec(args.arch, 10, args.channels, args.size)
    ids, pixels, _ = load_pool(pool_uri, ImageSpec(args.size, args.channels))
    device = select_device(args.gpu)
    model = checkpoint.load(ckpt, spec).eval().to(device)
    torch.set_num_threads(os.cpu_count())

    def one_pass(model, pixels):
        for s in range(0, len(pixels), args.batch):
            model(to_tensor(pixels[s:s + args.batch]).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(to_tensor(pixels[: args.batch]).to(device))  # warm-up
        one_pass_s, _ = C.seconds(one_pass, model, pixels)
    del pixels, model
    runtime.connect(include_dashboard=False)
    cfg = _config(pool_uri, args.arch, args.channels, args.size, 100, args.batch, use_gpu=args.gpu or None)
    total, result = C.seconds(acquire, cfg.acquire_request(ckpt, 1, np.empty(0, np.int64)),
                              AcquireOptions(batch_size=args.batch))
    floor_s = 2 * one_pass_s
    out = {"arch": args.arch, "size": args.size, "channels": args.channels, "device": str(device),
           "images": len(ids), "batch_size": args.batch, "one_pass_s": one_pass_s, "floor_s": floor_s,
           "acquire_total_s": total, "floor_ratio": total / floor_s, **C.per_stage(result)}
    C.save(args.name or f"acquire_floor_{args.arch}", out)
    return out


def gpu_summary(args) -> dict:
    """results/gpu.json from the floor runs of benchmarks/gpu_check.sh: images/s per GPU of the embed and the
    mix + score stages, and each run's floor ratio."""
    import torch

    runs = {}
    for name in args.runs:
        run = C.previous(name)
        gpus = max(1, torch.cuda.device_count())
        runs[name] = {"arch": run["arch"], "size": run["size"], "images": run["images"],
                      "floor_ratio": run["floor_ratio"], "acquire_total_s": run["acquire_total_s"],
                      "embed_images_per_s_per_gpu": run["images"] / run["timings"]["embed_s"] / gpus,
                      "mix_score_images_per_s_per_gpu": run["images"] / run["timings"]["mix_score_s"] / gpus,
                      "gpus": gpus, "device": run["device"]}
    out = {"runs": runs, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    C.save("gpu", out)
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
    from raydm2.acquisition.knn import ExactIndex, KnnSettings, build_ivf, ivf_params

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
    built = ivf_params(n, KnnSettings(mode="ivf"))
    build_s, index = C.seconds(build_ivf, lambda: iter([(ids, z)]), built, 0.5, 0, 1)
    for nprobe in args.nprobe:
        params = ivf_params(n, KnnSettings(mode="ivf", nprobe=nprobe))
        index.params = params
        search_s, (got_i, _) = C.seconds(index.search, ids[queries], z[queries], 10)
        recall = C.recall_at_k(got_i, exact_i)
        row = {"nlist": params.nlist, "nprobe": params.nprobe, "shortlist": params.shortlist, "scan": params.scan,
               "build_s": build_s,
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


def _clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """n unit vectors around `clusters` random centres (noise a third of the centres' spacing), like embeddings of
    many classes rather than uniform noise; generated in chunks so only the result is held."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 1_000_000):
        m = min(1_000_000, n - s)
        x = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _exact_combined(z: np.ndarray, queries: np.ndarray, k: int, l2_weight: float) -> np.ndarray:
    """Exact d_c neighbours of the rows `queries` of z, excluding themselves: float32 distances to every vector in
    chunks keep a generous shortlist, re-ranked in float64 by the library's own `nearest`."""
    import faiss

    from raydm2.acquisition.mixing import combined_distance, nearest

    q = z[queries]
    dim, keep = z.shape[1], 8 * k
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    for s in range(0, len(z), 200_000):
        c = z[s:s + 200_000]
        dist = (l2_weight * np.sqrt(np.maximum(faiss.pairwise_distances(q, c, faiss.METRIC_L2), 0))
                + (1 - l2_weight) * faiss.pairwise_distances(q, c, faiss.METRIC_L1)) / dim
        dist = np.concatenate([best_d, dist], axis=1)
        ids = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(c)), (len(q), len(c)))], axis=1)
        top = np.argpartition(dist, keep, axis=1)[:, :keep]
        best_d, best_i = np.take_along_axis(dist, top, 1), np.take_along_axis(ids, top, 1)
    out = np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        out[r] = nearest(combined_distance(q[r:r + 1], z[best_i[r]], l2_weight), best_i[r], queries[r:r + 1], k)[0]
    return out


def _resident_bytes(path: str) -> int:
    """What a process holding the pickled index shard at `path` as a search actor does keeps resident beyond its
    state before loading it (the pickle's bytes freed)."""
    code = ("import gc, pickle, faiss, raydm2.acquisition.knn\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "before = rss()\n"
            f"index = pickle.load(open({path!r}, 'rb'))\n"
            "gc.collect()\n"
            "print(rss() - before)\n")
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def index_scale(args) -> dict:
    """The sharded IVF index at 10^7 vectors with the library's default settings: per-shard build and search,
    bytes a search actor holds, and recall@10 against exact combined-distance neighbours."""
    import faiss

    from raydm2.acquisition.knn import KnnSettings, fill_shard, ivf_bytes, ivf_params, merge_nearest, train_ivf

    faiss.omp_set_num_threads(os.cpu_count())
    gen_s, z = C.seconds(_clustered_unit_vectors, args.n, args.dim, args.clusters)
    ids = np.arange(args.n, dtype=np.int64)
    queries = np.sort(np.random.default_rng(1).choice(args.n, args.queries, replace=False))
    knn = KnnSettings(mode="ivf", **({"index_bytes_per_actor": args.actor_bytes} if args.actor_bytes else {}))

    def batches():
        for s in range(0, args.n, 100_000):
            yield ids[s:s + 100_000], z[s:s + 100_000]

    train_s, trained = C.seconds(train_ivf, batches, ivf_params(args.n, knn), knn.l2_weight, 0, 1,
                                 knn.index_bytes_per_actor)
    print(f"trained in {train_s:.0f} s: {trained.params}", flush=True)
    # As the first shard's searchers do: the probed lists once, handed on to every shard.
    probe_s, probes = C.seconds(trained.probe, z[queries])
    found, shards = None, []
    workdir = tempfile.mkdtemp(prefix="index-scale-", dir=args.workdir)
    for s in range(trained.params.shards):
        fill_s, shard = C.seconds(fill_shard, trained, batches, s, 0, 1)
        search_s, answer = C.seconds(shard.search, ids[queries], z[queries], knn.k, probes)
        found = merge_nearest(found, answer, knn.k)
        path = os.path.join(workdir, "shard.pickle")
        with open(path, "wb") as f:
            pickle.dump(shard, f, protocol=5)
        row = {"vectors": len(shard), "fill_s": fill_s, "search_s": search_s, "resident_bytes": _resident_bytes(path),
               "serialized_bytes": os.path.getsize(path)}
        os.remove(path)
        del shard
        shards.append(row)
        print(f"shard {s}: {row}", flush=True)
    exact_s, exact = C.seconds(_exact_combined, z, queries, knn.k, knn.l2_weight)
    recall = C.recall_at_k(found[0], exact)
    search_s = probe_s + sum(r["search_s"] for r in shards)
    per_vector = max(r["resident_bytes"] / r["vectors"] for r in shards)
    out = {"vectors": args.n, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "k": knn.k,
           "nlist": trained.params.nlist, "nprobe": trained.params.nprobe, "shortlist": trained.params.shortlist,
           "scan": trained.params.scan,
           "train_size": trained.params.train_size, "shards": trained.params.shards, "shard_rows": shards,
           "index_bytes_per_actor_limit": knn.index_bytes_per_actor,
           "bytes_per_actor": max(r["resident_bytes"] for r in shards),
           "estimated_bytes_per_actor": ivf_bytes(max(r["vectors"] for r in shards), args.dim),
           "resident_bytes_per_vector": per_vector, "unsharded_bytes": per_vector * args.n,
           "generate_s": gen_s, "train_s": train_s, "fill_s": sum(r["fill_s"] for r in shards),
           "build_s": train_s + sum(r["fill_s"] for r in shards), "probe_s": probe_s, "search_s": search_s,
           "search_ms_per_query": 1000 * search_s / args.queries, "exact_s": exact_s, "recall_at_10": recall}
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


def _rss_parts() -> dict:
    """The driver's resident set now, split as Linux reports it: its own memory (RssAnon) and mapped shared pages
    (RssShmem, where object-store pages it has read stay counted), in MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {f"driver_{key.lower()}_after_mib": int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssShmem")}


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
           "driver_peak_rss_mib": C.PeakRSS.mib(), "driver_rss_before_mib": rss_before,
           **_rss_parts(), **C.per_stage(result)}
    print("SCALE_RESULT " + json.dumps(out, default=float), flush=True)
    return out


def _scale_recall(n: int, work: str, anchors: int) -> dict:
    """recall@10 of the default index on the embeddings a scale run searched (its synthetic pool, its seeded
    model, embedded in this process), against exact d_c neighbours of `anchors` sampled anchors."""
    from raydm2.acquisition.knn import KnnSettings, build_index
    from raydm2.acquisition.local_engine import load_pool
    from raydm2.acquisition.mixing import unit
    from raydm2.acquisition.model_actors import Embedder
    from raydm2.data.images import ImageSpec
    from raydm2.models.registry import ModelSpec

    pool_uri = os.path.join(work, f"synthetic_{n}")
    if not os.path.exists(pool_uri):
        _synthetic_pool(pool_uri, n)
    ckpt = C.random_checkpoint("small_cnn", 1, 28, os.path.join(work, "ckpt"))
    ids, pixels, ok = load_pool(pool_uri, ImageSpec(28, 1))
    embedder = Embedder(ckpt, ModelSpec("small_cnn", 10, 1, 28), os.cpu_count(), use_gpu=False)
    z = unit(np.concatenate([embedder({"id": ids[s:s + 4096], "pixels": pixels[s:s + 4096], "ok": ok[s:s + 4096]})["z"]
                             for s in range(0, len(ids), 4096)]))
    del pixels
    knn = KnnSettings()
    index = build_index(lambda: iter([(ids, z)]), len(ids), knn, seed=0, round_=1)
    queries = np.sort(np.random.default_rng(2).choice(len(ids), anchors, replace=False))
    exact = ids[_exact_combined(z, queries, knn.k, knn.l2_weight)]

    def recall() -> float:
        found, _ = index.search(ids[queries], z[queries], knn.k)
        return C.recall_at_k(found, exact)

    default = index.params
    out = {"recall_at_10": recall(), "images": len(ids), "anchors": anchors, "index": index.describe(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "sweep": []}
    # Around the default: fewer or more probes, a shorter or longer shortlist, each scanning the default
    # `scan_factor` candidates per shortlist entry (recall only: the search times of this sweep are not a measurement of the pipeline's).
    for nprobe, factor in ((32, 16), (64, 16), (128, 8), (128, 32), (256, 16)):
        index.params = replace(default, nprobe=nprobe, shortlist=factor * knn.k,
                               scan=knn.scan_factor * factor * knn.k)
        out["sweep"].append({"nprobe": nprobe, "shortlist": factor * knn.k, "recall_at_10": recall()})
        print(out["sweep"][-1], flush=True)
    return out


def scale(args) -> dict:
    """Each size's acquisition in its own process, then recall@10 of the default index at the largest size.
    With --recall-only, only the recall is measured and added to the committed acquire_scale.json."""
    work = args.workdir or tempfile.mkdtemp(prefix="scale-")
    if args.recall_only:
        before = C.previous("acquire_scale")
        recall = _scale_recall(max(r["images"] for r in before["runs"]), work, args.anchors)
        out = {**before, "runs_measured_at": before.get("runs_measured_at", before["measured_at"]),
               "recall_at_10": recall["recall_at_10"], "recall": recall}
        C.save("acquire_scale", out)
        return out
    rows = []
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
    recall = _scale_recall(max(args.sizes), work, args.anchors)
    out = {"runs": rows, "recall_at_10": recall["recall_at_10"], "recall": recall}
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
    q.add_argument("--size", type=int, default=28)
    q.add_argument("--channels", type=int, default=1)
    q.add_argument("--gpu", action="store_true", help="GPU actors, and the floor's pass on the GPU")
    q.add_argument("--synthetic", action="store_true", help="a synthetic pool of --n images instead of MNIST")
    q.add_argument("--workdir")
    q.add_argument("--name", help="results/NAME.json (default: acquire_floor_ARCH)")
    q.set_defaults(func=floor)
    q = sub.add_parser("gpu-summary")
    q.add_argument("runs", nargs="+", help="results/NAME.json of floor runs")
    q.set_defaults(func=gpu_summary)
    q = sub.add_parser("knn")
    q.add_argument("--data-root", default="../shared/data")
    q.add_argument("--n", type=int, default=200_000)
    q.add_argument("--queries", type=int, default=2000)
    q.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128])
    q.add_argument("--name", default="acquire_knn", help="results/NAME.json")
    q.set_defaults(func=knn_bench)
    q = sub.add_parser("scale")
    q.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    q.add_argument("--anchors", type=int, default=1000, help="anchors whose recall@10 is measured")
    q.add_argument("--recall-only", action="store_true", help="add the recall to the committed record only")
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
    q = sub.add_parser("index")
    q.add_argument("--n", type=int, default=10_000_000)
    q.add_argument("--dim", type=int, default=128)
    q.add_argument("--clusters", type=int, default=10_000)
    q.add_argument("--queries", type=int, default=1000)
    q.add_argument("--workdir")
    q.add_argument("--actor-bytes", type=int, help="knn.index_bytes_per_actor (default: the library's)")
    q.add_argument("--name", default="index_scale", help="results/NAME.json")
    q.set_defaults(func=index_scale)
    q = sub.add_parser("summary")
    q.set_defaults(func=summary)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
