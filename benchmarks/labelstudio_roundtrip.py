"""A round trip between raydm2 and a real Label Studio server, as an annotation team runs it.

    python benchmarks/labelstudio_roundtrip.py [--venv .ls-venv] [--port 8093]

Installs `label-studio` into its own venv (once), starts it on 127.0.0.1 with local-file serving rooted at a work
folder, and then: a raydm2 project over the shipped MNIST sample trains round 0 and selects round 1; `raydm2 export
--format labelstudio` writes the tasks (with the model's predictions), the labeling config and the images; the
script creates a Label Studio project with that config, registers the images folder as local storage, imports the
tasks, checks that predictions arrived and that an image is served, and annotates through the API as three
annotators would (one task skipped, one with a ground-truth annotation overruling another, one settled by a
majority). It exports JSON, JSON-MIN, CSV and TSV and imports each into its own copy of the project with `raydm2
label`, checking every label against the annotations made. Only the server it started is stopped (by pid).
Figures go to benchmarks/results/labelstudio_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "labelstudio_roundtrip.json")
FORMATS = {"JSON": "json", "JSON_MIN": "json", "CSV": "csv", "TSV": "tsv"}


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def __call__(self, method: str, path: str, body=None, expect=(200, 201), raw: bool = False, auth: bool = True):
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Token {self.token}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        if expect and status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return (status, payload) if raw else json.loads(payload or b"null")


def raydm2(*args: str, cwd: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "raydm2", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"raydm2 {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return run.stdout


def install(venv: str) -> float:
    started = time.perf_counter()
    if not os.path.exists(os.path.join(venv, "bin", "label-studio")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "label-studio"], check=True)
    return time.perf_counter() - started


def start(venv: str, port: int, root: str, data: str, token: str) -> subprocess.Popen:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"port {port} is in use (Label Studio would silently take the next one): pass --port")
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": data, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": root, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           # offline and private: no version check against PyPI, no analytics, no error reports
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    return subprocess.Popen(
        [os.path.join(venv, "bin", "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
         "--port", str(port), "--data-dir", data, "--username", "annotator@example.com", "--password", "raydm2-rt",
         "--user-token", token, "--enable-legacy-api-token"],
        env=env, stdout=open(os.path.join(data, "..", "server.log"), "wb"), stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.path.join(REPO, ".ls-venv"))
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--work", default=None, help="work folder (default: a new temp folder, removed after)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ls-rt-")
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    timings = {"install_s": round(install(args.venv), 1)}

    started = time.perf_counter()
    raydm2("ingest", "sample", "--out", "pools", cwd=work)
    raydm2("init", "--project", "proj", "--preset", "mnist", "--pool", "pools/mnist/train", "--set",
           "strategy.budget=12", "--set", "train.epochs=3", cwd=work)
    raydm2("seed", "--project", "proj", "--n", "40", cwd=work)
    raydm2("label", "--project", "proj", "--oracle", cwd=work)
    raydm2("round", "--project", "proj", "--quiet", cwd=work)
    raydm2("export", "--project", "proj", "--format", "labelstudio", "--out", "export/round1.json",
           "--url-prefix", "/data/local-files/?d=export/round1_images", cwd=work)
    timings["raydm2_round_and_export_s"] = round(time.perf_counter() - started, 1)
    tasks = json.load(open(os.path.join(work, "export", "round1.json")))

    token = secrets.token_hex(20)
    started = time.perf_counter()
    server = start(args.venv, args.port, work, os.path.join(work, "data"), token)
    api = Api(f"http://127.0.0.1:{args.port}", token)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"Label Studio exited ({server.returncode}); see {work}/server.log")
            try:
                api("GET", "/api/current-user/whoami")
                break
            except (urllib.error.URLError, ConnectionError, RuntimeError):
                time.sleep(1)
        timings["server_start_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        config = open(os.path.join(work, "export", "round1_config.xml")).read()
        project = api("POST", "/api/projects/", {"title": "raydm2 round 1", "label_config": config})["id"]
        api("POST", "/api/storages/localfiles/", {"project": project, "title": "round 1 images",
                                                  "path": os.path.join(work, "export"), "use_blob_urls": True})
        imported = api("POST", f"/api/projects/{project}/import?return_task_ids=true", tasks)
        ids = imported["task_ids"]
        first = api("GET", f"/api/tasks/{ids[0]}")
        predictions = api("GET", f"/api/predictions?task={ids[0]}")
        status, image = api("GET", "/data/local-files/?d=" + tasks[0]["data"]["image"].split("?d=", 1)[1], raw=True)
        original = open(os.path.join(work, "export", "round1_images", os.path.basename(tasks[0]["data"]["image"])),
                        "rb").read()
        checks = {"tasks_imported": len(ids) == len(tasks), "prediction_imported": len(predictions) == 1
                  and predictions[0]["result"] == tasks[0]["predictions"][0]["result"],
                  "image_served": status == 200 and image == original,
                  "raydm2_id_kept": first["data"]["raydm2_id"] == tasks[0]["data"]["raydm2_id"]}

        annotators = [api("POST", "/api/users/", {"email": f"a{k}@example.com", "username": f"a{k}"})["id"]
                      for k in (1, 2)]
        rids = [int(t["data"]["raydm2_id"]) for t in tasks]
        truth = dict(zip(rids, _oracle(work, rids)))

        def choice(c: str) -> list:
            return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [c]}}]

        wrong = {c: str((int(c) + 1) % 10) for c in map(str, range(10))}
        expected_json, expected_flat = {}, {}
        for k, (task_id, t) in enumerate(zip(ids, tasks)):
            rid, right = int(t["data"]["raydm2_id"]), truth[int(t["data"]["raydm2_id"])]
            if k == 0:  # skipped by its annotator
                api("POST", f"/api/tasks/{task_id}/annotations/", {"result": [], "was_cancelled": True})
                continue
            if k == 1:  # two annotators disagree; the reviewer marks the right one as ground truth
                api("POST", f"/api/tasks/{task_id}/annotations/", {"result": choice(wrong[right]),
                                                                   "completed_by": annotators[0]})
                api("POST", f"/api/tasks/{task_id}/annotations/", {"result": choice(right), "ground_truth": True,
                                                                   "completed_by": annotators[1]})
                expected_json[rid] = right  # the flat formats carry no ground truth: a tie there, refused
                continue
            if k == 2:  # a majority of three
                for who, c in zip([None, *annotators], (right, right, wrong[right])):
                    api("POST", f"/api/tasks/{task_id}/annotations/",
                        {"result": choice(c), **({"completed_by": who} if who else {})})
            else:
                api("POST", f"/api/tasks/{task_id}/annotations/", {"result": choice(right)})
            expected_json[rid] = expected_flat[rid] = right
        timings["annotate_s"] = round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        imports = {}
        for fmt, ext in FORMATS.items():
            status, body = api("GET", f"/api/projects/{project}/export?exportType={fmt}", raw=True)
            path = os.path.join(work, f"export_{fmt.lower()}.{ext}")
            open(path, "wb").write(body)
            copy = os.path.join(work, f"proj_{fmt.lower()}")
            shutil.copytree(os.path.join(work, "proj"), copy)
            if fmt != "JSON":  # drop the disputed task: only JSON says which annotation is the ground truth
                _drop_task(path, ids[1])
            out = raydm2("label", "--project", copy, "--file", path, cwd=work)
            labels = json.loads(raydm2("status", "--project", copy, "--json", cwd=work))
            got = _labels(copy)
            want = expected_json if fmt == "JSON" else expected_flat
            imports[fmt] = {"bytes": len(body), "line": out.strip(), "labels": len(got), "expected": len(want),
                            "all_right": got == {str(k): v for k, v in want.items()}}
            assert labels["rounds"][1]["labels"] == len(want)
        timings["export_import_s"] = round(time.perf_counter() - started, 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "label_studio": _version(args.venv),
              "tasks": len(tasks), "checks": checks, "imports": imports, "timings_s": timings,
              "command": "python benchmarks/labelstudio_roundtrip.py"}
    print(json.dumps(result, indent=1))
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=1)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if not all(checks.values()) or not all(v["all_right"] for v in imports.values()):
        sys.exit("round trip failed: see the checks above")


def _oracle(work: str, ids: list) -> list:
    sys.path.insert(0, REPO)
    from raydm2.data import pool

    table = pool.read_columns(os.path.join(work, "pools", "mnist", "train"), ["id", "label"], ids)
    by_id = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
    return [str(by_id[i]) for i in ids]


def _labels(project: str) -> dict:
    from raydm2.ledger.project import Project

    table = Project.open(project).labels(1)
    return {str(i): str(c) for i, c in zip(table.column("id").to_pylist(), table.column("label").to_pylist())}


def _drop_task(path: str, task_id: int) -> None:
    text = open(path, newline="").read()
    if path.endswith(".json"):
        open(path, "w").write(json.dumps([r for r in json.loads(text) if r["id"] != task_id]))
        return
    sep = "\t" if path.endswith(".tsv") else ","
    lines = text.split("\r\n")
    column = [c.strip('"') for c in lines[0].split(sep)].index("id")
    keep = [lines[0]] + [line for line in lines[1:] if line and line.split(sep)[column].strip('"') != str(task_id)]
    open(path, "w", newline="").write("\r\n".join(keep) + "\r\n")


def _version(venv: str) -> str:
    run = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import importlib.metadata as m; print(m.version('label-studio'))"],
                         capture_output=True, text=True)
    return run.stdout.strip()


if __name__ == "__main__":
    main()
