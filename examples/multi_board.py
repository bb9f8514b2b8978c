"""A farm spread over several "boards": a router and N node agents, on one machine.

What it shows, as docs/multi-board.md sets it up on real boards:

* the router: a ``Farm`` that listens on TCP (here on loopback) with CURVE
  keys, serving tasks on its own core and on every node that joins;
* the nodes: ``rknn-farm node --connect ... --keys ...`` processes, each with
  its own farm (worker processes, shared memory, crash handling); the router
  sends them its model at join, since they are not given one;
* the key exchange: the router admits only the public keys in
  ``keys/authorized``; each node holds the router's public key;
* that the nodes' answers equal the router's own, and how the tasks spread
  (``farm.stats()["workers"]`` has one entry per local core and per node).

Run it (from a checkout, or with rknn-farm installed)::

    pip install --no-deps rapidocr-onnxruntime==1.4.4   # ships the PP-OCR classifier it runs
    python examples/multi_board.py
    python examples/multi_board.py --nodes 3 --tasks 1000
    python examples/multi_board.py --model model.onnx --no-keys

On real boards, run the ``rknn-farm node`` line this script prints on each
board instead (with the router's address and the board's own cores), and give
the ``Farm`` ``listen="tcp://0.0.0.0:5555"``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ocr_pipeline.py, next to this file
from ocr_pipeline import find_ppocr_model  # noqa: E402

try:
    import farm as farm_package
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import farm as farm_package
from farm import Farm  # noqa: E402
from farm.runtime.keys import generate_keys  # noqa: E402

CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
N_INPUTS = 8  # distinct inputs, cycled


def make_keys(directory: Path, names: list[str]) -> tuple[str, dict[str, str]]:
    """The router's key directory and one per node, public keys exchanged (docs/multi-board.md)."""
    router = directory / "router"
    generate_keys(str(router), "server")
    (router / "authorized").mkdir()
    node_dirs = {}
    for name in names:
        own = directory / name
        generate_keys(str(own), name)
        (router / "authorized" / f"{name}.key").write_bytes((own / f"{name}.key").read_bytes())
        (own / "server.key").write_bytes((router / "server.key").read_bytes())
        node_dirs[name] = str(own)
    return str(router), node_dirs


def start_node(address: str, name: str, core: int, keys: str | None, cache: Path) -> subprocess.Popen:
    """``rknn-farm node`` as its own process (``python -m farm node``)."""
    command = [sys.executable, "-m", "farm", "node", "--connect", address, "--name", name]
    command += ["--cores", str(core), "--cache-dir", str(cache)]
    if keys:
        command += ["--keys", keys]
    env = dict(os.environ)
    package_root = str(Path(farm_package.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(command, env=env)
    print(f"started {name} (pid {process.pid}): rknn-farm {' '.join(command[3:])}", flush=True)
    return process


def stop_nodes(processes: list[subprocess.Popen]) -> None:
    """Ctrl-C to each node (it closes its farm and leaves), then wait."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_nodes(farm: Farm, count: int, processes: list[subprocess.Popen], within: float) -> float:
    """Seconds until ``count`` nodes are ready; exits if a node dies or time runs out."""
    started = time.monotonic()
    while sum(1 for w in farm.stats()["workers"] if w["node"] != "local" and w["ready"]) < count:
        dead = [p.args for p in processes if p.poll() is not None]
        if dead or time.monotonic() - started > within:
            sys.exit(f"nodes did not join within {within:.0f} s" + (f"; exited: {dead}" if dead else ""))
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help=f"an ONNX model (default: PP-OCR's {CLS_MODEL})")
    parser.add_argument("--nodes", type=int, default=2, help="node agents to start (default 2)")
    parser.add_argument("--tasks", type=int, default=300, help="tasks to run once they joined (default 300)")
    parser.add_argument("--no-keys", action="store_true", help="plain TCP (allowed on loopback only)")
    parser.add_argument("--join-timeout", type=float, default=60.0, metavar="S")
    args = parser.parse_args()
    model = args.model or find_ppocr_model(CLS_MODEL)
    if model is None:
        sys.exit(f"no --model, and no rapidocr-onnxruntime to take {CLS_MODEL} from (see the docstring)")
    names = [f"node-{i + 1}" for i in range(args.nodes)]

    with tempfile.TemporaryDirectory(prefix="rknn-farm-multi-board-") as scratch:
        router_keys, node_keys = (None, {}) if args.no_keys else make_keys(Path(scratch), names)
        processes: list[subprocess.Popen] = []
        try:
            with Farm(model, schedule="0", listen="tcp://127.0.0.1:*", keys_dir=router_keys) as farm:
                address = farm.listen_address
                assert address is not None
                print(f"router: {address}, local core 0, {'plain TCP' if args.no_keys else 'CURVE keys'}")
                spec = farm.inputs[0] if farm.inputs else None
                if spec is None:
                    sys.exit("the model declares no inputs; give a model with one input")
                # A dynamic batch is 1; other dynamic dims 64 (image models downsample:
                # a 1x1 image would come out of their pooling with no pixels left).
                shape = [(1 if axis == 0 else 64) if d is None else d for axis, d in enumerate(spec.shape)]
                rng = np.random.default_rng(0)
                feeds = [rng.random(shape, dtype=np.float32).astype(spec.dtype) for _ in range(N_INPUTS)]
                expected = [farm.run(feed)[0].copy() for feed in feeds]  # the router's own answers

                # On one machine, spread the nodes over its CPUs; a real board serves its own 0,1,2.
                for i, name in enumerate(names):
                    processes.append(start_node(address, name, i + 1, node_keys.get(name), Path(scratch)))
                joined_s = wait_for_nodes(farm, args.nodes, processes, args.join_timeout)
                print(f"{args.nodes} nodes joined in {joined_s:.1f} s")

                before = {w["worker"]: w["tasks"] for w in farm.stats()["workers"]}
                start = time.perf_counter()
                inputs = [feeds[i % N_INPUTS] for i in range(args.tasks)]
                worst = 0.0
                for i, outputs in enumerate(farm.map(inputs)):
                    worst = max(worst, float(np.abs(outputs[0] - expected[i % N_INPUTS]).max()))
                wall = time.perf_counter() - start
                print(f"{args.tasks} tasks in {wall:.2f} s: {args.tasks / wall:.1f} tasks/s")
                print(f"every output equals the router's own answer: max |difference| {worst:.2g}")
                print("tasks per node:")
                workers = sorted(farm.stats()["workers"], key=lambda w: (w["node"] != "local", w["node"]))
                for w in workers:
                    served = w["tasks"] - before.get(w["worker"], 0)
                    where = f"core {w['core']}" if w["node"] == "local" else f"{w['contexts']} context(s)"
                    print(f"  {w['node']}: {served} tasks ({where})")
                if worst > 1e-4:
                    sys.exit("a node's answer differs from the router's")
        finally:
            stop_nodes(processes)


if __name__ == "__main__":
    main()
