"""The tables of docs/benchmarks.md, generated from the committed results.

    python benchmarks/tables.py            # rewrite every table in docs/benchmarks.md in place
    python benchmarks/tables.py --check    # exit 1, naming each table, if the docs differ from the records

Each table in the doc sits between a line `<!-- table: NAME -->` and a line `<!-- /table -->`; NAME is a key of
TABLES, whose function builds the table from benchmarks/results/*.json (and, where a table needs per-seed figures,
the per-run records under benchmarks/results/runs/). A new table is one function here plus a marker pair there.

Only the standard library: no Ray, torch or network. The protocol definitions of a protocol that has no result file
yet, and the dataset presets (ε, model, DM2 settings), are read from the source of benchmarks/select_bench.py and
raydm2/ledger/presets.py with `ast`, without importing either.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import string
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")

OPEN = re.compile(r"^<!-- table: ([A-Za-z0-9_.-]+) -->$")
CLOSE = "<!-- /table -->"

# DM2's own defaults (SPEC; raydm2/acquisition/strategies/dm2.py and knn.py), which a preset's "strategy" overrides.
DM2_DEFAULTS = {"lam": 0.8, "k": 10, "mix": "random"}
PARAM_LABEL = {"lam": "λ", "k": "k", "mix": "mix"}


# ---------------------------------------------------------------------------------------------------------------
# Loading


class Results:
    """The committed result files of one results folder, each read once."""

    def __init__(self, root: str = RESULTS):
        self.root = root
        self._cache: dict[str, object] = {}

    def _read(self, path: str):
        if path not in self._cache:
            with open(path) as f:
                self._cache[path] = json.load(f)
        return self._cache[path]

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.root, f"{name}.json"))

    def json(self, name: str) -> dict:
        """results/<name>.json"""
        return self._read(os.path.join(self.root, f"{name}.json"))

    def record(self, folder: str, strategy: str, seed: int) -> dict:
        """results/runs/<folder>/<strategy>-seed<seed>.json: one finished (strategy, seed) run."""
        return self._read(os.path.join(self.root, "runs", folder, f"{strategy}-seed{seed}.json"))

    def has_records(self, folder: str) -> bool:
        return os.path.isdir(os.path.join(self.root, "runs", folder))


def _source_tree(relpath: str) -> ast.Module:
    with open(os.path.join(ROOT, relpath)) as f:
        return ast.parse(f.read(), relpath)


def _evaluate(node: ast.AST):
    """A literal, or a literal arithmetic expression such as 2 / 255."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Mult, ast.Add, ast.Sub)):
        a, b = _evaluate(node.left), _evaluate(node.right)
        return {ast.Div: a / b, ast.Mult: a * b, ast.Add: a + b, ast.Sub: a - b}[type(node.op)]
    return ast.literal_eval(node)


def _assigned(tree: ast.Module, name: str) -> ast.AST:
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    raise KeyError(f"no top-level assignment to {name}")


def _dict_get(node: ast.AST, *keys: str) -> ast.AST | None:
    for key in keys:
        if not isinstance(node, ast.Dict):
            return None
        match = [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value == key]
        if not match:
            return None
        node = match[0]
    return node


def preset(name: str) -> dict:
    """The parts of raydm2.ledger.presets.PRESETS[name] a table shows: model arch, ε, DM2's settings."""
    node = _dict_get(_assigned(_source_tree("raydm2/ledger/presets.py"), "PRESETS"), name)
    if node is None:
        raise KeyError(f"no preset {name!r} in raydm2/ledger/presets.py")
    arch, eps, strategy = (_dict_get(node, *keys) for keys in (("model", "arch"), ("train", "epsilon"), ("strategy",)))
    return {"arch": _evaluate(arch) if arch else None, "epsilon": _evaluate(eps) if eps else None,
            "strategy": _evaluate(strategy) if strategy else {}}


def dm2_settings(protocol_preset: str) -> dict:
    """λ, k, mix and spread DM2 runs with under a preset."""
    s = preset(protocol_preset)["strategy"]
    return {"lam": s.get("lam", DM2_DEFAULTS["lam"]), "k": s.get("knn", {}).get("k", DM2_DEFAULTS["k"]),
            "mix": s.get("mix", DM2_DEFAULTS["mix"]), "spread": s.get("spread")}


def protocol(res: Results, name: str) -> dict:
    """A protocol as its result file recorded it (settings, pool sizes, seeds); a protocol that was never run
    (no select_<name>.json) as benchmarks/select_bench.py defines it, with its default seeds."""
    if res.exists(f"select_{name}"):
        d = res.json(f"select_{name}")
        return {**d["settings"], "pool_subset": d["pool_subset"], "test_subset": d["test_subset"],
                "seeds": len(d["seeds"])}
    tree = _source_tree("benchmarks/select_bench.py")
    defined = _dict_get(_assigned(tree, "PROTOCOLS"), name)
    if defined is None:
        raise KeyError(f"no protocol {name!r} in benchmarks/select_bench.py")
    seeds = [_evaluate(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
             and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--seeds"
             for kw in node.keywords if kw.arg == "default"]
    return {**_evaluate(defined), "pool_subset": _evaluate(_assigned(tree, "SUBSET")),
            "test_subset": _evaluate(_assigned(tree, "TEST_SUBSET")), "seeds": len(seeds[0])}


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; align is one letter per column, l or r."""
    assert len(header) == len(align) and all(len(r) == len(header) for r in rows), (header, rows)

    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def bold(text: str) -> str:
    return f"**{text}**"


def f1(x: float) -> str:
    return f"{x:,.1f}"


def pm(stat: dict, digits: int = 4) -> str:
    """mean ± std of a {'mean', 'std'} summary."""
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def mean_std(values: list[float]) -> dict:
    """The summaries' convention: mean and sample standard deviation (ddof 1)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def stages(t: dict, sep: str = " / ") -> str:
    """embed / index / search / mix+score seconds of a per-stage timing."""
    return sep.join(f1(t[k]) for k in ("embed_s", "index_s", "search_s", "mix_score_s"))


def short_float(x: float) -> str:
    """1e-3, 5e-4 (small values in exponent form, as the protocol definitions write them), 0.05, 0.1."""
    if x < 0.01:
        mantissa, exponent = f"{x:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:g}"


def epsilon(x: float) -> str:
    """ε as n/255."""
    n = round(x * 255)
    assert abs(n / 255 - x) < 1e-12, x
    return f"{n}/255"


def setting_label(param: str, value) -> str:
    return f"{PARAM_LABEL[param]} = {value}"


# ---------------------------------------------------------------------------------------------------------------
# Acquisition, training and scale


def acquire_knn(res: Results, name: str = "acquire_knn") -> str:
    d = res.json(name)
    rows = []
    for s in d["sweep"]:
        cells = [str(s["nprobe"]), _shortlist(s), f"{s['recall_at_10']:.4f}", f"{s['search_s']:.2f} s",
                 f"{s['speedup']:.0f}×"]
        rows.append([bold(c) for c in cells] if s["nprobe"] == d["chosen"]["nprobe"] else cells)
    return table(["nprobe", "shortlist / scanned", "recall@10", f"search, {d['queries']:,} queries", "speed-up"],
                 "rrrrr", rows)


def _shortlist(index: dict) -> str:
    """Shortlist re-ranked by d_c, and fast-scan candidates re-ranked by L2 down to it."""
    return f"{index['shortlist']} / {index['scan']}"


FLOOR_MODELS = {"small_cnn": "small CNN", "resnet18": "resnet18 (CIFAR stem)"}
# Each model's floor records, oldest first, with what the code had then; the last is acquire_floor_<arch>.json.
FLOOR_RECORDS = {"small_cnn": {"acquire_floor_small_cnn_ivf_flat": "IVF-Flat index",
                               "acquire_floor_small_cnn_fast_scan": "fast-scan index",
                               "acquire_floor_small_cnn_cluster_threads": "actor threads from the cluster's CPUs",
                               "acquire_floor_small_cnn_rerun_before_pixels": "the same code, re-run beside the next "
                                                                              "row",
                               "acquire_floor_small_cnn": "pool decoded once for mixing"},
                 "resnet18": {"acquire_floor_resnet18": "IVF-Flat index, partners through two hash joins"}}


def acquire_floor(res: Results) -> str:
    rows = []
    for arch, label in FLOOR_MODELS.items():
        for name, code in FLOOR_RECORDS[arch].items():
            d = res.json(name)
            rows.append([label, code, d["measured_at"][:10], f"{d['one_pass_s']:.1f} s", f"{d['floor_s']:.1f} s",
                         f"{d['acquire_total_s']:.1f} s", f"{d['floor_ratio']:#.3g}", stages(d["timings"])])
    return table(["model", "code", "measured", "one pass", "floor", "acquisition", "ratio",
                  "embed / index / search / mix+score (s)"], "lllrrrrl", rows)


STARTUP_READERS = {"v2": "V2 (Ray 2.60's default)", "v1": "V1 (what `runtime.connect` selects)"}


def acquire_startup_readers(res: Results) -> str:
    d = res.json("acquire_startup")["reader_comparison"]
    rows = [[label, f"{d[f'{reader}_median_total_s']:.1f} s", ", ".join(stages(r, "/") for r in d["runs"][reader])]
            for reader, label in STARTUP_READERS.items()]
    return table(["Parquet reader", "median total", "embed / index / search / mix+score (s), each run"], "lrl", rows)


def acquire_startup(res: Results) -> str:
    d = res.json("acquire_startup")
    rows = [[d["measured_at"][:10], f"{d['median_total_s']:.1f} s", ", ".join(stages(r, "/") for r in d["runs"])]]
    return table(["measured", "median total", "embed / index / search / mix+score (s), each run"], "lrl", rows)


TRAIN_RUNS = {"at_1w": "DM2-AT, 1 worker", "plain_1w": "plain, 1 worker", "at_2w": "DM2-AT, 2 workers (DDP, gloo)"}


def train(res: Results) -> str:
    d = res.json("train")
    rows = [[label, f"{r['clean_accuracy']:.4f}", f"{r['robust_accuracy']:.4f}", f"{r['images_per_s']:,.0f}"]
            for key, label in TRAIN_RUNS.items() for r in [d["runs"][key]]]
    return table(["training", "clean accuracy", "FGSM-robust accuracy", "images/s per worker"], "lrrr", rows)


def train_round(res: Results) -> str:
    d = res.json("train_round")
    rows = [[label, f"{r['train_round_s']:.1f} s", f"{r['command_s']:.1f} s",
             ", ".join(f"{run['train_round_s']:.1f}" for run in r["runs"]), f"{r['clean_accuracy']:.3f}"]
            for label, r in (("before (a report and checkpoint every epoch)", d["before"]), ("now", d))]
    return table(["", "median to checkpoint", "median command", "each run (s)", "clean accuracy"], "lrrlr", rows)


# The scale run before the fast-scan index, kept beside the current one.
# Each scale record, oldest first, and what its run changed.
SCALE_RECORDS = {"acquire_scale_ivf_flat": "the first", "acquire_scale_driver_top": "fast-scan replaces IVF-Flat",
                 "acquire_scale": "top-B reduced in a task, not the driver"}


def acquire_scale(res: Results) -> str:
    """Each scale record's runs, oldest first, with the recall and RSS ratio measured at the largest size."""
    rows = []
    for name, change in SCALE_RECORDS.items():
        d = res.json(name)
        for r in d["runs"]:
            ix = r["index"]
            index = "exact" if ix["kind"] == "exact" else f"{_ivf_kind(ix)} nlist {ix['nlist']:,}, nprobe {ix['nprobe']}"
            largest = r["images"] == max(x["images"] for x in d["runs"])
            rows.append([change, index, _power(r["images"]), f"{r['total_s']:,.0f} s", f"{r['s_per_image'] * 1000:.1f} ms",
                         stages(r["timings"]),
                         f"{r['driver_peak_rss_mib']:,.0f} MiB ({r['driver_rss_before_mib']:,.0f})",
                         f"{d['recall_at_10']:.4f}" if largest else "",
                         f"{d['rss_ratio_1e6_1e5']:.3f}" if largest else ""])
    return table(["run: what changed", "index", "images", "total", "per image", "embed / index / search / mix+score (s)",
                  "driver peak RSS (before)", "recall@10", "RSS 10^6 / 10^5"], "llrrrlrrr", rows)


def _ivf_kind(index: dict) -> str:
    # Records from before the fast-scan index have no `scan`.
    return "fast-scan IVF" if "scan" in index else "IVF-Flat"


def acquire_scale_targets(res: Results) -> str:
    """Issue #21's target 1, key by key, from the scale record."""
    d = res.json("acquire_scale")
    total = next(r["total_s"] for r in d["runs"] if r["images"] == 10**6)
    rows = [["10^6 images end to end", f"{total:,.0f} s", "≤ 1,200 s", total <= 1200],
            ["recall@10 of the default index at 10^6", f"{d['recall_at_10']:.4f}", "≥ 0.98", d["recall_at_10"] >= 0.98],
            ["driver peak RSS, 10^6 / 10^5", f"{d['rss_ratio_1e6_1e5']:.3f}", "≤ 1.3", d["rss_ratio_1e6_1e5"] <= 1.3]]
    return table(["key", "measured", "target", "met"], "lrrl",
                 [r[:3] + ["yes" if r[3] else "**no**"] for r in rows])


def acquire_scale_recall(res: Results) -> str:
    r = res.json("acquire_scale")["recall"]
    ix = r["index"]
    rows = [[f"{ix['nprobe']} (default)", str(ix["shortlist"]), f"{r['recall_at_10']:.4f}"]]
    rows += [[str(s["nprobe"]), str(s["shortlist"]), f"{s['recall_at_10']:.4f}"] for s in r["sweep"]]
    return table(["nprobe", "shortlist", f"recall@10, {r['anchors']:,} anchors of the {_power(r['images'])} pool"],
                 "rrr", rows)


def _power(n: int) -> str:
    power = len(str(n)) - 1
    return f"10^{power}" if 10 ** power == n else f"{n:,}"


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def index_scale(res: Results) -> str:
    d = res.json("index_scale")
    rows = [[_power(d["vectors"]), str(d["dim"]), f"{d['nlist']:,} / {d['nprobe']} / {_shortlist(d)}",
             f"{d['shards']} ({', '.join(format(r['vectors'], ',') for r in d['shard_rows'])})",
             f"{gib(d['bytes_per_actor'])} (limit {gib(d['index_bytes_per_actor_limit'])})",
             f"{d['train_s']:,.0f} + {d['fill_s']:,.0f} s", f"{d['search_ms_per_query']:.2f} ms",
             f"{d['recall_at_10']:.4f}"]]
    return table(["vectors", "d", "nlist / nprobe / shortlist / scanned", "shards (vectors each)", "held per search actor",
                  "build (train + fill)", "search per query", "recall@10"], "rrrlrrrr", rows)


def _default_nlist(n: int) -> int:
    # raydm2/acquisition/knn.py ivf_params, for n far above 39 * nlist.
    return int(min(65_536, max(16, 4 * n ** 0.5)))


def _search_work(n: int, shards: int, nlist: int, nprobe: int, reranked: int) -> float:
    """Vectors compared per query: the quantizer (once: the first shard hands its probes on), the probed lists,
    every shard's re-ranks (`reranked` per shard: the scanned candidates by L2 and the shortlist by d_c)."""
    return nlist + nprobe * n / nlist + shards * reranked


def index_1e8(res: Results) -> str:
    """10^8 vectors by arithmetic on index_scale.json: bytes per vector (measured, the values scaled with d),
    build cost as n·nlist·d (train: train size·nlist·d), search per query as `_search_work`·d."""
    d = res.json("index_scale")
    n0, dim0, limit = d["vectors"], d["dim"], d["index_bytes_per_actor_limit"]
    # Besides its float32 values a vector holds a fast-scan code of d/4 bytes (4 bits per 2 dimensions) and
    # ids; the code grows with d, the ids do not.
    overhead = d["resident_bytes_per_vector"] - 4.25 * dim0
    reranked = d["shortlist"] + d["scan"]
    work0 = _search_work(n0, d["shards"], d["nlist"], d["nprobe"], reranked)
    rows = []
    for dim in (dim0, 512):
        n = 10 ** 8
        per_vector = 4.25 * dim + overhead
        shards = -(-int(n * per_vector) // limit)
        nlist = _default_nlist(n)
        train_s = d["train_s"] * (39 * nlist * nlist) / (d["train_size"] * d["nlist"]) * dim / dim0
        fill_s = d["fill_s"] * (n * nlist) / (n0 * d["nlist"]) * dim / dim0
        query_s = d["search_ms_per_query"] / 1000 * _search_work(n, shards, nlist, d["nprobe"], reranked) / work0
        query_s *= dim / dim0
        cores = d["machine"]["cpus"]
        rows.append([_power(n), str(dim), f"{n * per_vector / 1e9:,.0f} GB", f"{shards} × ≤ {gib(limit)}",
                     f"{nlist:,}", f"{(train_s + fill_s) * cores / 3600:,.1f}", f"{query_s * 1000:.2f} ms",
                     f"{query_s * n * cores / 3600:,.0f}"])
    return table(["vectors", "d", "index in all", "search actors", "nlist", "build (core-hours)",
                  f"search per query ({d['machine']['cpus']} cores)", "search of every anchor (core-hours)"],
                 "rrrrrrrr", rows)


# ---------------------------------------------------------------------------------------------------------------
# Selection protocols


# Words only: every figure in the protocol table comes from the protocol's result file (or, for a protocol never
# run, its definition in select_bench.py) and the preset. A cell written "same..." is checked against the row above.
PROTOCOL_ROWS = {
    "mnist": {
        "name": "`mnist` (NoiseStability's)",
        "pool": "seeded {pool_subset:,}-image subset of MNIST train; seeded {test_subset:,}-image subset of test",
        "model": "{arch}, {optimizer} {lr}, batch {batch_size}, {epochs} epochs per round, DM2-AT ε = {epsilon}",
        "plan": "{initial:,} (resampled until every class appears), +{per_round:,}, {rounds}, {seeds}",
    },
    "fashion_mnist": {
        "name": "`fashion_mnist`",
        "pool": "same, Fashion-MNIST",
        "model": "same",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "imbalanced_fashion_mnist_10": {
        "name": "`imbalanced_fashion_mnist_10`",
        "pool": "same, cut long-tailed to a head/tail ratio of {long_tail} (below); the test subset is not cut",
        "model": "same",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "imbalanced_fashion_mnist_50": {
        "name": "`imbalanced_fashion_mnist_50`",
        "pool": "same, ratio {long_tail}",
        "model": "same",
        "plan": "same",
    },
    "noisy_fashion_mnist": {
        "name": "`noisy_fashion_mnist`",
        "pool": "`fashion_mnist`'s, {corrupt:.0%} of it corrupted as CIFAR-10-C and {duplicate:.0%} near-duplicated "
                "(below); the test subset is clean",
        "model": "same",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "mid_budget_fashion_mnist": {
        "name": "`mid_budget_fashion_mnist`",
        "pool": "`fashion_mnist`'s",
        "model": "same, {epochs} epochs per round",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "cifar10_cpu": {
        "name": "`cifar10_cpu` (CPU-sized)",
        "pool": "the shared CIFAR-10 subset: {pool_subset:,} train, {test_subset:,} test",
        "model": "{arch}, {optimizer} {lr}, wd {weight_decay}, batch {batch_size}, {epochs} epochs per round, "
                 "ε = {epsilon}",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "imbalanced_cifar10_10": {
        "name": "`imbalanced_cifar10_10`",
        "pool": "same, cut long-tailed to a head/tail ratio of {long_tail}; the test subset is not cut",
        "model": "same",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
    "imbalanced_cifar10_50": {
        "name": "`imbalanced_cifar10_50`",
        "pool": "same, ratio {long_tail}",
        "model": "same",
        "plan": "same",
    },
    "cifar10_gpu": {
        "name": "`cifar10_gpu` (the paper's; documented, not run here)",
        "pool": "`cifar10_cpu`'s",
        "model": "{arch}, {optimizer} {lr}, wd {weight_decay}, batch {batch_size}, {epochs} epochs{use_gpu}",
        "plan": "{initial:,}, +{per_round:,}, {rounds}, {seeds}",
    },
}
ARCHS = {"small_cnn": "small CNN", "resnet18": "ResNet-18",
         "resnet8": "ResNet-8 (He et al.'s CIFAR ResNet, 16/32/64 channels, 78k parameters)"}
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}
PROTOCOL_FIELDS = {"pool": ("dataset", "pool_subset", "test_subset", "long_tail", "corrupt", "duplicate"),
                   "model": ("arch", "optimizer", "lr", "weight_decay", "batch_size", "epochs", "epsilon", "use_gpu"),
                   "plan": ("initial", "per_round", "rounds", "seeds")}


def _protocol_fields(res: Results, name: str) -> dict:
    p = protocol(res, name)
    train = p["settings"].get("train", {})
    pre = preset(p["preset"])
    arch = p["settings"].get("model", {}).get("arch", pre["arch"])
    return {"dataset": p["dataset"], "pool_subset": p["pool_subset"], "test_subset": p["test_subset"],
            "long_tail": p.get("long_tail"), **p.get("noisy", {"corrupt": None, "duplicate": None}),
            "arch": ARCHS[arch], "optimizer": OPTIMIZERS[train["optimizer"]], "lr": short_float(train["lr"]),
            "weight_decay": short_float(train["weight_decay"]) if "weight_decay" in train else None,
            "batch_size": train["batch_size"], "epochs": train["epochs"], "epsilon": epsilon(pre["epsilon"]),
            "use_gpu": ", `use_gpu`" if train.get("use_gpu") else "",
            "initial": p["initial"], "per_round": p["per_round"], "rounds": p["rounds"], "seeds": p["seeds"]}


def select_protocols(res: Results) -> str:
    defined = {_evaluate(k) for k in _assigned(_source_tree("benchmarks/select_bench.py"), "PROTOCOLS").keys}
    if defined != set(PROTOCOL_ROWS):
        raise ValueError(f"protocol table: select_bench.py defines {sorted(defined - set(PROTOCOL_ROWS))} without "
                         f"a row, and has no {sorted(set(PROTOCOL_ROWS) - defined)}")
    rows, above = [], None
    for name, words in PROTOCOL_ROWS.items():
        fields = _protocol_fields(res, name)
        cells = [words["name"]]
        for column in ("pool", "model", "plan"):
            template = words[column]
            if template.startswith("same"):
                # "same" is every field of the row above; "same, <words>" all but the dataset and what <words> name.
                named = {"dataset"} | {f for _, f, _, _ in string.Formatter().parse(template) if f}
                same = PROTOCOL_FIELDS[column] if template == "same" else tuple(
                    f for f in PROTOCOL_FIELDS[column] if f not in named)
                differ = [f for f in same if above is None or fields[f] != above[f]]
                if differ:
                    raise ValueError(f"protocol table: {name}'s {column} is written 'same' but differs in {differ}")
            cells.append(template.format(**fields))
        rows.append(cells)
        above = fields
    return table(["protocol", "pool", "model, training", "initial, per round, rounds, seeds"], "llll", rows)


# Words a cell carries beyond its figure: (protocol, strategy) -> note on the acquisition seconds.
ACQUIRE_NOTES = {("cifar10_cpu", "noise_stability"): "three processes"}


def _dm2_label(settings: dict) -> str:
    spread = f", spread {settings['spread']}" if settings["spread"] else ""
    return f"(λ {settings['lam']}, k {settings['k']}, mix {settings['mix']}{spread})"


def _per_seed(res: Results, folder: str, strategy: str, seeds: list[int]) -> list[float]:
    return [res.record(folder, strategy, s)["aubc"] for s in seeds]


def _earlier(res: Results, name: str, strategy: str, current_dm2: dict) -> str:
    """AUBC of the unrecorded table a protocol's table replaces (results/<...>_before_records.json). DM2's cell
    also gives the unrecorded sweep's figure at today's λ when the earlier table ran DM2 at another λ."""
    pattern = re.compile(rf"select_{re.escape(name)}(_rounds\d+)?(_seeds\d+)?(_subset)?(_partial)?"
                         r"_before_records\.json")
    before = [f[:-5] for f in sorted(os.listdir(res.root)) if pattern.fullmatch(f)]
    if not before:
        return ""
    assert len(before) == 1, before
    aubc = res.json(before[0])["aubc"]
    if strategy not in aubc:
        return ""
    value = aubc[strategy]["mean"]
    sweep = f"ablation_{name}_subset_partial_before_records"
    if strategy != "dm2" or not res.exists(sweep):
        return f"{value:.4f}"
    lams = {r["value"]: r["aubc"]["mean"] for r in res.json(sweep)["rows"] if r["param"] == "lam"}
    then = [lam for lam, v in lams.items() if v == value]  # the λ the earlier table's DM2 ran at
    now = current_dm2["lam"]
    if len(then) != 1 or then[0] == now or now not in lams:
        return f"{value:.4f}"
    return f"{lams[now]:.4f} (λ {now}), {value:.4f} (λ {then[0]})"


def select_table(res: Results, name: str, result: str | None = None) -> str:
    """One protocol's strategies, best AUBC first: results/select_<name>.json (or the partial `result`), per-seed
    AUBC from the records in results/runs/<name>-<engine>/, and the earlier table's AUBC from
    results/select_<name>*_before_records.json."""
    d = res.json(result or f"select_{name}")
    s = d["settings"]
    folder = f"{name}-{d['engine']}"
    dm2 = dm2_ran_with(res, name, result)
    labels = s["initial"] + s["per_round"] * s["rounds"]
    order = sorted(d["summary"], key=lambda k: -d["summary"][k]["aubc"]["mean"])
    note = _preset_note(res, name, dm2)
    label = _dm2_label(dm2) if note == "the preset" else f"{_dm2_label(dm2)[:-1]}, {note})"
    # Long-tailed pools' records also measure balanced accuracy; its columns follow accuracy's where every
    # strategy has them.
    balanced = all("balanced_aubc" in m for m in d["summary"].values())
    rows = []
    for strategy in order:
        m = d["summary"][strategy]
        acquire = f1(m["acquire_s_per_round"]["mean"])
        if (name, strategy) in ACQUIRE_NOTES:
            acquire += f" ({ACQUIRE_NOTES[name, strategy]})"
        rows.append([f"{bold('dm2')} {label}" if strategy == "dm2" else strategy, pm(m["aubc"]),
                     *([pm(m["balanced_aubc"])] if balanced else []), pm(m["robust_aubc"]), pm(m["final_accuracy"]),
                     *([pm(m["final_balanced_accuracy"])] if balanced else []), pm(m["final_robust_accuracy"]),
                     ", ".join(f"{x:.3f}" for x in _per_seed(res, folder, strategy, d["seeds"])), acquire,
                     _earlier(res, name, strategy, dm2)])
    header = ["strategy", "AUBC", *(["balanced AUBC"] if balanced else []), "robust AUBC",
              f"final accuracy ({labels:,} labels)", *(["final balanced"] if balanced else []), "final robust",
              "per seed", "acquire s/round", "earlier table"]
    if not any(r[-1] for r in rows):  # a protocol first measured with records replaces no table
        header, rows = header[:-1], [r[:-1] for r in rows]
    return table(header, "l" * len(header), rows)


def select_picks(res: Results, name: str, result: str | None = None) -> str:
    """What each strategy acquired (every round after the seed set), by pool group, as shares of its picks, and the
    class balance of its picks (normalised entropy, 1 = every class alike), mean ± std over seeds
    (results/select_<name>.json's `picked` and `pick_balance`); the header gives each group's share of the pool,
    which random should match. Strategies whose records predate the list of added ids have no row. `result` names
    a partial result file instead."""
    d = res.json(result or f"select_{name}")
    groups = [g for g in d["pool_groups"] if g != "all"]  # a pool of one group has only the balance columns
    order = [k for k in sorted(d["summary"], key=lambda k: -d["summary"][k]["aubc"]["mean"]) if k in d["picked"]]
    rows = [[bold("dm2") if k == "dm2" else k,
             *(f"{100 * d['picked'][k][g]['mean']:.1f} ± {100 * d['picked'][k][g]['std']:.1f} %" for g in groups),
             *(pm(d["pick_balance"][k][when], 3) for when in ("first_round", "all_rounds"))]
            for k in order]
    return table(["strategy", *(f"{g.replace('_', ' ')} ({100 * d['pool_groups'][g]:.1f} % of the pool)"
                                for g in groups), "class balance, first acquisition", "class balance, all"],
                 "l" + "r" * (len(groups) + 2), rows)


def select_goal(res: Results) -> str:
    """Issue #22's goal, protocol by protocol, for every protocol whose whole run is recorded
    (results/select_<name>.json) or, saying so, every run of some strategies (select_<name>_subset_partial.json):
    DM2's AUBC above random's, and within one standard deviation of the best other strategy's."""
    rows = []
    for name in PROTOCOL_ROWS:
        # A protocol recorded for every seed and round but not yet every strategy has a row that says so.
        result = next((r for r in (f"select_{name}", f"select_{name}_subset_partial") if res.exists(r)), None)
        if result is None:
            continue
        aubc = res.json(result)["aubc"]
        label = f"`{name}`" if result == f"select_{name}" else f"`{name}` (partial: {len(aubc)} strategies)"
        dm2, rnd = aubc["dm2"], aubc["random"]
        best = max((k for k in aubc if k != "dm2"), key=lambda k: aubc[k]["mean"])
        rank = 1 + sum(v["mean"] > dm2["mean"] for v in aubc.values())
        above = dm2["mean"] > rnd["mean"]
        near = dm2["mean"] >= aubc[best]["mean"] - aubc[best]["std"]
        goal = bold("met") if above and near else "not met"
        if result != f"select_{name}":  # the strategies still to run may change it
            goal = "met so far" if above and near else "not met so far"
        rows.append([label, f"{pm(dm2)} ({_preset_note(res, name, dm2_ran_with(res, name, result))})", pm(rnd),
                     f"{best} {pm(aubc[best])}", f"{rank} of {len(aubc)}", "yes" if above else "no",
                     "yes" if near else "no", goal])
    return table(["protocol", "DM2 AUBC", "random", "best other", "DM2's rank", "above random",
                  "within 1 std of the best", "goal"], "llllllll", rows)


def _preset_setting(res: Results, name: str, rows: list[dict]) -> dict:
    """The sweep's starting point: for each parameter, the value with no records folder of its own (the protocol's
    own DM2 runs stand for it). It is the preset as it was when the protocol ran, which may since have changed."""
    folder = f"ablation-{name}-{res.json(f'ablation_{name}')['engine']}"
    start = {}
    for r in rows:
        if not res.has_records(f"{folder}/{r['param']}={r['value']}"):
            assert r["param"] not in start, (name, r)
            start[r["param"]] = r["value"]
    if set(start) != set(PARAM_LABEL):
        raise ValueError(f"ablation_{name}: the records give no starting point for {set(PARAM_LABEL) - set(start)}")
    return start


def dm2_ran_with(res: Results, name: str, result: str | None = None) -> dict:
    """λ, k, mix and spread of a protocol's own DM2 runs: as its result file (select_<name>.json or the partial
    `result`) recorded them; for files from before they were recorded, the ablation's starting point where the
    protocol has a sweep, otherwise its preset's."""
    result = result or f"select_{name}"
    if res.exists(result) and "dm2_settings" in res.json(result):
        return res.json(result)["dm2_settings"]
    if res.exists(f"ablation_{name}"):
        return {**_preset_setting(res, name, res.json(f"ablation_{name}")["rows"]), "spread": None}
    return dm2_settings(protocol(res, name)["preset"])


def _preset_note(res: Results, name: str, ran: dict) -> str:
    now = dm2_settings(protocol(res, name)["preset"])
    return "the preset" if ran == now else "the preset when this ran"


def ablation_table(res: Results, name: str, robust: bool) -> str:
    """DM2 one setting at a time from the preset: results/ablation_<name>.json, robust AUBC, per-seed AUBC and the
    first round's accuracy from the records (results/runs/ablation-<name>-<engine>/<setting>/, the preset's in
    results/runs/<name>-<engine>/), and random from results/select_<name>.json for reference."""
    d = res.json(f"ablation_{name}")
    sel = res.json(f"select_{name}")
    s = sel["settings"]
    seeds = d["seeds"]
    assert d["rounds"] == s["rounds"] and seeds == sel["seeds"], name
    labels, first = s["initial"] + s["per_round"] * s["rounds"], s["initial"] + s["per_round"]
    start = _preset_setting(res, name, d["rows"])

    def at_first(recs):
        return statistics.fmean(next(r["clean_accuracy"] for r in rec["rounds"] if r["labels"] == first)
                                for rec in recs)

    def row(label, aubc, final, recs, first_mean, robust_stat=None):
        return [label, aubc, *([pm(robust_stat or mean_std([r["robust_aubc"] for r in recs]))] if robust else []),
                pm(final), ", ".join(f"{r['aubc']:.3f}" for r in recs), f"{first_mean:.3f}"]

    own = f"{name}-{sel['engine']}"
    sweep = f"ablation-{name}-{d['engine']}"
    # The start is the protocol's own DM2 runs until the preset moves on and they run again; the start's records
    # are then kept in the sweep's `defaults` folder.
    start_folder = f"{sweep}/defaults" if res.has_records(f"{sweep}/defaults") else own
    preset_recs = [res.record(start_folder, "dm2", seed) for seed in seeds]
    preset_row = next(r for r in d["rows"] if r["param"] == "lam" and r["value"] == start["lam"])
    note = _preset_note(res, name, {**start, "spread": None})
    label = ", ".join(setting_label(p, v) for p, v in start.items()) + f" ({note})"
    out = [row(bold(label), bold(pm(preset_row["aubc"])), preset_row["final_accuracy"], preset_recs,
               at_first(preset_recs))]
    for r in d["rows"]:
        if r["value"] == start[r["param"]]:
            continue
        recs = [res.record(f"{sweep}/{r['param']}={r['value']}", "dm2", seed) for seed in seeds]
        assert abs(mean_std([x["aubc"] for x in recs])["mean"] - r["aubc"]["mean"]) < 1e-9, (name, r)
        label = setting_label(r["param"], r["value"])
        if r["value"] == DM2_DEFAULTS[r["param"]]:
            label += " (SPEC's default)"
        out.append(row(label, pm(r["aubc"]), r["final_accuracy"], recs, at_first(recs)))
    rnd = sel["summary"]["random"]
    random_recs = [res.record(own, "random", seed) for seed in seeds]
    out.append(row("(random)", pm(rnd["aubc"]), rnd["final_accuracy"], random_recs,
                   next(c["accuracy"]["mean"] for c in rnd["curve"] if c["labels"] == first), rnd["robust_aubc"]))
    header = ["setting", "AUBC", *(["robust AUBC"] if robust else []), f"final accuracy ({labels:,} labels)",
              "per seed", f"accuracy at {first:,} labels, mean"]
    return table(header, "l" * len(header), out)


def lam_validation(res: Results, name: str) -> str:
    """DM2's λ on the validation split (results/ablation_<name>_validation_subset_partial.json: λ only, k and mix
    at the preset; and its records), the basis of the preset's λ, with the same λ's test AUBC from
    results/ablation_<name>.json beside it (reported, not chosen on)."""
    d = res.json(f"ablation_{name}_validation_subset_partial")
    tested = {r["value"]: r["aubc"] for r in res.json(f"ablation_{name}")["rows"] if r["param"] == "lam"}
    preset_lam = dm2_settings(name)["lam"]
    rows = [r for r in d["rows"] if r["param"] == "lam"]
    best = max(rows, key=lambda r: r["aubc"]["mean"])
    out = []
    for r in rows:
        # The λ the preset had when the sweep ran is the protocol's own runs; every other λ has a folder.
        folder = f"ablation-{name}-{d['engine']}-validation/lam={r['value']}"
        folder = folder if res.has_records(folder) else f"{name}-{d['engine']}-validation"
        recs = [res.record(folder, "dm2", seed) for seed in d["seeds"]]
        assert abs(mean_std([x["aubc"] for x in recs])["mean"] - r["aubc"]["mean"]) < 1e-9, (name, r)
        label = setting_label("lam", r["value"])
        label += " (the preset)" if r["value"] == preset_lam else ""
        label += " (SPEC's default)" if r["value"] == DM2_DEFAULTS["lam"] else ""
        cells = [label, pm(r["aubc"]), ", ".join(f"{x['aubc']:.3f}" for x in recs), pm(r["final_accuracy"]),
                 pm(tested[r["value"]]) if r["value"] in tested else "–"]
        out.append([bold(c) for c in cells] if r is best else cells)
    if res.exists(f"select_{name}_validation_subset_partial"):
        rnd = res.json(f"select_{name}_validation_subset_partial")
        recs = [res.record(f"{name}-{rnd['engine']}-validation", "random", seed) for seed in rnd["seeds"]]
        out.append(["(random)", pm(rnd["aubc"]["random"]), ", ".join(f"{x['aubc']:.3f}" for x in recs),
                    pm(rnd["final_accuracy"]["random"]), "–"])
    return table(["λ", "validation AUBC", "per seed", "validation final accuracy", "test AUBC (not used to choose)"],
                 "lrlrr", out)


def spread_validation(res: Results, name: str) -> str:
    """DM2's `spread` and `balance` options against its defaults on the validation split
    (results/ablation_<name>_validation_subset_partial.json and its records), random's validation runs beside them
    (results/select_<name>_validation_subset_partial.json): AUBC, per seed, accuracy after the first acquisition
    (where the balanced protocols' uncertainty picks dip) and final accuracy. Nothing here has seen the test
    subset."""
    d = res.json(f"ablation_{name}_validation_subset_partial")
    rnd = res.json(f"select_{name}_validation_subset_partial")
    own = f"{name}-{d['engine']}-validation"  # the protocol's own DM2 runs on validation, at the preset
    sweep = f"ablation-{name}-{d['engine']}-validation"
    now = dm2_settings(name)["spread"]
    # Spread off started the sweep; once the preset moved on, its runs were kept in the sweep's `defaults` folder.
    start = f"{sweep}/defaults" if res.has_records(f"{sweep}/defaults") else own
    settings = [(f"spread off ({'the preset' if now is None else 'the preset before this sweep'})", start, "dm2")] + [
        (f"spread = {r['value']}" + (" (the preset)" if r["value"] == now else ""),
         own if r["value"] == now else f"{sweep}/spread={r['value']}", "dm2")
        for r in d["rows"] if r["param"] == "spread"] + [
        ("balance (spread off)", f"{sweep}/balance=True", "dm2") for r in d["rows"] if r["param"] == "balance"] + [
        ("(random)", f"{name}-{rnd['engine']}-validation", "random")]
    rows, means = [], []
    for label, folder, strategy in settings:
        recs = [res.record(folder, strategy, seed) for seed in d["seeds"]]
        first, last = recs[0]["rounds"][1]["labels"], recs[0]["rounds"][-1]["labels"]
        aubc = mean_std([r["aubc"] for r in recs])
        rows.append([label, pm(aubc), ", ".join(f"{r['aubc']:.3f}" for r in recs),
                     pm(mean_std([r["rounds"][1]["clean_accuracy"] for r in recs])),
                     pm(mean_std([r["rounds"][-1]["clean_accuracy"] for r in recs]))])
        means.append(aubc["mean"])
    best = max(range(len(rows) - 1), key=means.__getitem__)  # the best DM2 setting, random aside
    rows[best] = [bold(c) for c in rows[best]]
    return table(["DM2 setting", "validation AUBC", "per seed", f"accuracy at {first:,} labels",
                  f"final accuracy ({last:,} labels)"], "lrlrr", rows)


# ---------------------------------------------------------------------------------------------------------------
# Registry and the doc


def real_pools(res: Results) -> str:
    r = res.json("real_pools")
    t = r["timings_s"]
    s = r["single_process_sample"]
    return table(["images (candidates)", "embed", "mix + score", "embed / index / search / mix+score (s)",
                  "acquisition", "decode share (one process)"], "rrrlrr",
                 [[f"{r['images']:,} ({r['candidates']:,})", f"{r['embed_images_per_s']:.1f} images/s",
                   f"{r['mix_score_images_per_s']:.1f} images/s", stages(t), f"{r['acquire_total_s']:.1f} s",
                   f"{100 * r['single_process_decode_share']:.1f} % ({s['decode_s']:.2f} s of "
                   f"{s['decode_s'] + s['forward_s']:.2f} s, {s['images']} images)"]])


def real_pools_pretrained(res: Results) -> str:
    r = res.json("real_pools_pretrained")["results"]
    names = [n for n in r["scratch"] if n != "ranking"]
    rows = []
    for name in sorted(names, key=lambda n: -r["pretrained"][n]["aubc"]["mean"]):
        rows.append([name] + [f"{pm(r[start][name]['aubc'])} (#{r[start]['ranking'].index(name) + 1})"
                              for start in ("scratch", "pretrained")]
                    + [pm(r[start][name]["final_accuracy"]) for start in ("scratch", "pretrained")])
    return table(["strategy", "AUBC from scratch (rank)", "AUBC pretrained (rank)", "final accuracy, scratch",
                  "final accuracy, pretrained"], "lrrrr", rows)


def cold_start(res: Results) -> str:
    r = res.json("cold_start")["results"]
    rows = []
    # Records from before raydm2 pretrain have no simclr start.
    for start in [s for s in ("scratch", "pretrained", "simclr") if s in r]:
        for name in ("random", "margin", "dm2"):
            cells = [r[start][seeding][name] for seeding in ("random", "typiclust")]
            rows.append([start, name] + [pm(c["first_round_accuracy"], 3) for c in cells]
                        + [pm(c["aubc"]) for c in cells])
    return table(["backbone", "strategy", "round 0 accuracy, random round 0", "round 0 accuracy, TypiClust",
                  "AUBC, random round 0", "AUBC, TypiClust round 0"], "llrrrr", rows)


def labelstudio_roundtrip(res: Results) -> str:
    r = res.json("labelstudio_roundtrip")
    rows = [[fmt.replace("_", "-"), f"{v['bytes']:,}", f"{v['labels']} of {v['expected']}",
             "yes" if v["all_right"] else "**no**"] for fmt, v in r["imports"].items()]
    return table(["export format", "bytes", "labels imported", "every label right"], "lrrl", rows)


TABLES = {
    "acquire_knn": acquire_knn,
    "acquire_knn_1e6": lambda res: acquire_knn(res, "acquire_knn_1e6"),
    "acquire_floor": acquire_floor,
    "acquire_startup": acquire_startup,
    "acquire_startup_readers": acquire_startup_readers,
    "train": train,
    "train_round": train_round,
    "select_protocols": select_protocols,
    "select_goal": select_goal,
    "select_mnist": lambda res: select_table(res, "mnist"),
    "select_fashion_mnist": lambda res: select_table(res, "fashion_mnist"),
    "select_cifar10_cpu": lambda res: select_table(res, "cifar10_cpu"),
    "select_imbalanced_fashion_mnist_50": lambda res: select_table(res, "imbalanced_fashion_mnist_50"),
    "picks_imbalanced_fashion_mnist_50": lambda res: select_picks(res, "imbalanced_fashion_mnist_50"),
    "select_noisy_fashion_mnist": lambda res: select_table(res, "noisy_fashion_mnist"),
    "select_mid_budget_fashion_mnist": lambda res: select_table(res, "mid_budget_fashion_mnist",
                                                                "select_mid_budget_fashion_mnist_subset_partial"),
    "picks_noisy_fashion_mnist": lambda res: select_picks(res, "noisy_fashion_mnist"),
    "ablation_mnist": lambda res: ablation_table(res, "mnist", robust=True),
    "ablation_fashion_mnist": lambda res: ablation_table(res, "fashion_mnist", robust=False),
    "lam_validation_mnist": lambda res: lam_validation(res, "mnist"),
    "spread_validation_fashion_mnist": lambda res: spread_validation(res, "fashion_mnist"),
    "acquire_scale": acquire_scale,
    "acquire_scale_targets": acquire_scale_targets,
    "acquire_scale_recall": acquire_scale_recall,
    "index_scale": index_scale,
    "index_1e8": index_1e8,
    "real_pools": real_pools,
    "real_pools_pretrained": real_pools_pretrained,
    "labelstudio_roundtrip": labelstudio_roundtrip,
    "cold_start": cold_start,
}


def _regions(lines: list[str]) -> list[tuple[str, int, int]]:
    """(name, first line after the opening marker, index of the closing marker) for every marker pair."""
    out, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i].strip())
        if m:
            j = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == CLOSE or OPEN.match(lines[j].strip())),
                     None)
            if j is None or lines[j].strip() != CLOSE:
                raise ValueError(f"table {m.group(1)!r}: opening marker on line {i + 1} has no {CLOSE}")
            out.append((m.group(1), i + 1, j))
            i = j
        elif lines[i].strip() == CLOSE:
            raise ValueError(f"{CLOSE} on line {i + 1} without an opening marker")
        i += 1
    return out


def render(text: str, results: str = RESULTS) -> tuple[str, list[str]]:
    """(the doc with every marked table regenerated, names of the tables that changed). Unknown table names and
    registered tables without markers raise."""
    res = Results(results)
    lines = text.split("\n")
    regions = _regions(lines)
    names = [n for n, _, _ in regions]
    unknown = [n for n in names if n not in TABLES]
    missing = [n for n in TABLES if n not in names]
    if unknown or missing:
        raise ValueError(f"unknown table markers: {unknown}; registered tables without markers: {missing}")
    changed = []
    for name, start, end in reversed(regions):
        new = TABLES[name](res).split("\n") + [""]  # a blank line ends the table before the closing marker
        old = lines[start:end]
        if [line.rstrip() for line in old] != new:
            changed.append(name)
        lines[start:end] = new
    return "\n".join(lines), sorted(changed, key=names.index)


def check(doc: str = DOC, results: str = RESULTS) -> list[str]:
    """Names of the tables in `doc` that differ from what the results give (empty: up to date)."""
    with open(doc) as f:
        return render(f.read(), results)[1]


def write(doc: str = DOC, results: str = RESULTS) -> list[str]:
    with open(doc) as f:
        text, changed = render(f.read(), results)
    if changed:
        with open(doc, "w") as f:
            f.write(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a table differs from the results; change nothing")
    p.add_argument("--doc", default=DOC, help="the Markdown file (default: %(default)s)")
    p.add_argument("--results", default=RESULTS, help="the results folder (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.check:
        changed = check(args.doc, args.results)
        for name in changed:
            print(f"{os.path.relpath(args.doc)}: table {name!r} differs from the results; "
                  f"run python benchmarks/tables.py")
        return 1 if changed else 0
    changed = write(args.doc, args.results)
    print(f"rewrote {len(changed)} table(s): {', '.join(changed)}" if changed else "every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
