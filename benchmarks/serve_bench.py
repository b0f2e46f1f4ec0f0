"""Serving throughput and latency: `@serve.batch` on vs off, at concurrency 1, 4 and 16.

Run: `make bench` (or `.venv/bin/python benchmarks/serve_bench.py [--requests 96]`).

One Ray (loopback), one replica of the `hf` backend on a small untrained Llama (our
tokenizer; hidden 256, 4 layers ≈ 4.7M params, so that the model, not HTTP, is the work),
CPU, deployed twice in turn with the same settings except `batching` (max batch 16, 2 ms
wait). Each level sends `--requests` chat completions (a short user message, `max_tokens`
48, greedy; the untrained model always uses all 48) from that many client threads over
HTTP, after a warm-up;
req/s = requests ÷ wall time; latencies are per request, client side.
Last line: RESULT batch_speedup_c16=<float> p99_ms_c16=<float>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def post(url: str, body: dict[str, Any]) -> float:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        out = json.loads(resp.read())
    assert out["choices"][0]["message"] is not None
    return time.perf_counter() - t0


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as resp:
        return dict(json.loads(resp.read()))


def level(url: str, concurrency: int, n: int, max_tokens: int) -> dict[str, float]:
    bodies = [
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"Question {i}: what is the weather?"}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        for i in range(n)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": n / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=256, help="tiny model hidden size")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--wait", type=float, default=0.05, help="batch_wait_timeout_s")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from ray import serve

    from ttpa_ray.config import ServeConfig, TinyShape
    from ttpa_ray.ray_utils import init_ray
    from ttpa_ray.serve.deploy import deploy, start_proxy
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tools = [t.to_openai() for t in load_builtin().tools]
        shape = TinyShape(
            hidden_size=args.hidden, num_layers=args.layers, intermediate_size=3 * args.hidden
        )
        model = create_tiny_model_dir(
            catalog_texts(tools, examples_per_tool=1), Path(tmp) / "tiny", shape
        )
        init_ray(num_cpus=os.cpu_count() or 2)
        start_proxy("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for batching in (True, False):
            cfg = ServeConfig(
                model=str(model),
                port=port,
                batching=batching,
                max_batch_size=16,
                batch_wait_timeout_s=args.wait,
                max_ongoing_requests=64,
                num_cpus=1,
            )
            deploy(cfg, name="bench")
            level(url, 4, 8, args.max_tokens)  # warm-up
            name = "batching on" if batching else "batching off"
            results[name] = {}
            for c in (1, 4, 16):
                before = stats(port)
                results[name][c] = level(url, c, args.requests, args.max_tokens)
                after = stats(port)
                batches = after["batches"] - before["batches"]
                results[name][c]["batch"] = (
                    (after["batched_requests"] - before["batched_requests"]) / batches
                    if batches
                    else 1.0
                )
            serve.delete("bench")
        serve.shutdown()

    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs; tiny Llama (hidden {args.hidden}, "
        f"{args.layers} layers), 1 replica, CPU"
    )
    print(f"{args.requests} requests per level, max_tokens {args.max_tokens}, greedy")
    print(f"{'':14s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'batch':>6s}")
    for name, levels in results.items():
        for c, r in levels.items():
            print(
                f"{name:14s} {c:4d} {r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                f"{r['batch']:6.1f}"
            )
    speedup = results["batching on"][16]["rps"] / results["batching off"][16]["rps"]
    p99 = results["batching on"][16]["p99_ms"]
    print(f"batching at concurrency 16: {speedup:.2f}× the req/s of no batching (target ≥ 3×)")
    print(f"RESULT batch_speedup_c16={speedup:.3f} p99_ms_c16={p99:.1f}")


if __name__ == "__main__":
    main()
