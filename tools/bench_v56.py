"""RWKV-6 (and RWKV-5.2) next to BlinkDL's `rwkv` package on the same random weights (issue 16 item 4).

    python tools/bench_v56.py --rounds 3 --json bench_v56.json              # v6 0.1B shape
    python tools/bench_v56.py --variants 6.0 5.2 --rounds 3                 # and v5.2, same L / C

Shapes (the published 0.1B ones): L 12, C 768, N 64 (H 12), V 65536, F int(3.5 C) // 32 * 32 = 2688;
RWKV-6 with the ddlerp LoRA rank D_mix 32 and the decay LoRA rank D_decay 64. The weights are
drawn with BlinkDL's names in trained-like ranges by tools/make_v56_fixtures.py's `draw` (seed 0),
saved once as a float32 BlinkDL `.pth` for the package (class RWKV, strategy "cpu fp32") and as HF
directories for rwkv_np (rwkv_np.convert.save_pretrained: float32, bfloat16, int8 files, loaded
memory-mapped with weights= that storage): the same numbers on both sides.

Protocol as tools/bench.py's: per round every engine once, each in a fresh process (libraries
imported before the load clock starts), engines alternating; the best round of each kept.
Measured per engine: load (s), decode ms/token at B = 1 (--steps one-token steps after a 4-token
prompt, the prompt untimed), prefill of --prefill tokens to the next token's logits (tokens/s,
best of --prefill-repeats calls after two warm-up calls), peak RSS. The targets (issue 16): fp32
decode <= 0.5 x the package's ms/token; prefill T=256 >= 1.5 x its tokens/s.

The machines here are shared (2 cores, other engineers' jobs): absolute times drift between
runs; the ratios of one run are what count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TOOLS, ".."))
sys.path.insert(0, TOOLS)
PEER_GOMP = os.environ.get("GOMP_SPINCOUNT")  # as given, before rwkv_np sets its own default

# variant: (L, H, N, V, F, ranks (D_mix, D_decay) or ())
SHAPES = {"6.0": (12, 12, 64, 65536, 2688, (32, 64)), "5.2": (12, 12, 64, 65536, 2688, ())}
PACKAGE_ENV = {"RWKV_V7_ON": "0", "RWKV_CUDA_ON": "0", "RWKV_JIT_ON": "1"}
DECODE_TARGET, PREFILL_TARGET = 0.5, 1.5   # fp32 decode ms vs the package's; prefill tok/s vs its
PROMPT = 4                                 # tokens before the timed decode steps


# ---------------------------------------------------------------- the weights

def make_model(variant: str, directory: str, storages) -> dict:
    """Write model.pth (float32, BlinkDL names) and one HF dir per storage under `directory`;
    returns {storage: dir}. Existing files are reused (a --keep directory)."""
    from make_v56_fixtures import Fixture, draw
    L, H, N, V, F, ranks = SHAPES[variant]
    gen = "v6" if variant == "6.0" else "v5"
    dirs = {s: os.path.join(directory, s) for s in storages}
    pth = os.path.join(directory, "model.pth")
    if os.path.exists(pth) and all(os.path.exists(os.path.join(d, "config.json")) for d in dirs.values()):
        return dirs
    import collections

    import torch

    from rwkv_np.convert import save_pretrained
    names = __import__(f"rwkv_np.{gen}.names", fromlist=["names"])
    fx = Fixture(f"bench-{variant}", gen, variant, 0, heads=H, head_size=N, layers=L, vocab=V, ffn=F,
                 disk_dtype="float32", ranks=ranks)
    blink = collections.OrderedDict((k, np.ascontiguousarray(v, np.float32))
                                    for k, v in draw(fx, np.random.default_rng(0)).items())
    os.makedirs(directory, exist_ok=True)
    torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in blink.items()), pth)
    tensors = names.from_blinkdl(blink)
    config = names.infer_config(tensors)
    if variant == "5.2":
        assert config.variant == "5.2", config.variant
    for s, d in dirs.items():
        save_pretrained(d, config, tensors, None if s == "float32" else s)
    return dirs


# ---------------------------------------------------------------- engines (one per process)

class Ours:
    def __init__(self, directory, storage, variant):
        if variant == "6.0":
            from rwkv_np.v6.model import Rwkv6ForCausalLM as cls
        else:
            from rwkv_np.v5.model import Rwkv5ForCausalLM as cls
        self.name = f"rwkv_np {storage}"
        self.model = cls.from_pretrained(directory, weights=storage)

    def prefill(self, ids):  # the last position's logits, as the package's forward returns
        return self.model(np.asarray(ids)[None], logits_to_keep=1).logits

    def decode(self, ids, steps) -> float:
        state = self.model(np.asarray(ids)[None]).state
        tok = np.asarray(ids[-1:])[None]
        t = time.perf_counter()
        for _ in range(steps):
            state = self.model(tok, state=state).state
        return time.perf_counter() - t


class Package:
    """BlinkDL's `rwkv` pip package, class RWKV, strategy 'cpu fp32', on model.pth."""
    def __init__(self, pth, storage, variant):
        from rwkv.model import RWKV
        self.name = "BlinkDL rwkv cpu fp32"
        self.model = RWKV(model=pth, strategy="cpu fp32", verbose=False)
        assert f"{self.model.version:.1f}" == variant, (self.model.version, variant)

    def prefill(self, ids):  # sequence mode; logits of the last position only
        return self.model.forward([int(i) for i in ids], None)[0]

    def decode(self, ids, steps) -> float:  # one-token mode: forward([id], state)
        _, state = self.model.forward([int(i) for i in ids], None)
        t = time.perf_counter()
        for _ in range(steps):
            _, state = self.model.forward([int(ids[-1])], state)
        return time.perf_counter() - t


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def engine_round(args) -> None:
    """One round of one engine in this (fresh) process: load, warm up, time; one JSON line out."""
    from rwkv_np import set_threads
    set_threads(args.threads)
    if args.engine == "package":
        if PEER_GOMP is None:  # torch's libgomp keeps its default spin, not rwkv_np's
            os.environ.pop("GOMP_SPINCOUNT", None)
        os.environ.update(PACKAGE_ENV)
        import torch
        torch.set_num_threads(args.threads)
        import rwkv.model  # noqa: F401  (library imports are not load time)
        cls = Package
    else:
        import rwkv_np.v5.model  # noqa: F401
        import rwkv_np.v6.model  # noqa: F401
        cls = Ours
    before = peak_rss_mb()
    t = time.perf_counter()
    engine = cls(args.dir, args.storage, args.variant)
    res = {"name": engine.name, "load_s": time.perf_counter() - t}
    ids = np.random.default_rng(0).integers(0, 65536, max(args.prefill + [PROMPT]))
    engine.decode(ids[:PROMPT], 1)                      # touches every weight, compiles one-token mode
    res["rss_after_1_token_MB"] = peak_rss_mb() - before
    for T in args.prefill:                              # warm-up (JIT, TorchScript profiling) x 2
        engine.prefill(ids[:T])
        engine.prefill(ids[:T])
    for T in args.prefill:
        best = float("inf")
        for _ in range(args.prefill_repeats):
            t = time.perf_counter()
            engine.prefill(ids[:T])
            best = min(best, time.perf_counter() - t)
        res[f"prefill_tok_s_T{T}"] = T / best
    res["decode_ms_B1"] = engine.decode(ids[:PROMPT], args.steps) / args.steps * 1e3
    res["peak_rss_MB"] = peak_rss_mb()
    print(json.dumps(res))


# ---------------------------------------------------------------- driver

def bench_variant(args, variant, directory) -> dict:
    t = time.perf_counter()
    dirs = make_model(variant, directory, args.storage)
    print(f"v{variant}: weights ready in {time.perf_counter() - t:.0f} s ({directory})", flush=True)
    engines = [("ours", s, dirs[s]) for s in args.storage]
    if not args.no_package:
        engines.append(("package", "float32", os.path.join(directory, "model")))  # RWKV appends .pth
    res = {}
    for r in range(args.rounds):
        order = engines if r % 2 == 0 else engines[::-1]  # alternate who runs first
        for kind, storage, path in order:
            cmd = [sys.executable, os.path.abspath(__file__), "--engine", kind, "--dir", path,
                   "--storage", storage, "--variants", variant, "--threads", str(args.threads),
                   "--steps", str(args.steps), "--prefill-repeats", str(args.prefill_repeats),
                   "--prefill", *map(str, args.prefill)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench_v56: {kind} {storage} v{variant} failed: {out.stderr.strip()[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            d = res.setdefault(got.pop("name"), {})
            for key, value in got.items():  # best round: fastest, least memory
                better = max if key.startswith("prefill") else min
                d[key] = better(d.get(key, value), value)
        print(f"v{variant} round {r + 1}/{args.rounds} done", flush=True)
    return res


def verdicts(res, prefill) -> list:
    peer = res.get("BlinkDL rwkv cpu fp32")
    ours = res.get("rwkv_np float32")
    if not (peer and ours):
        return []
    out = []
    ratio = ours["decode_ms_B1"] / peer["decode_ms_B1"]
    out.append((f"decode fp32 ms/token <= {DECODE_TARGET} x package", ratio, ratio <= DECODE_TARGET))
    if 256 in prefill:
        ratio = ours["prefill_tok_s_T256"] / peer["prefill_tok_s_T256"]
        out.append((f"prefill fp32 T=256 tok/s >= {PREFILL_TARGET} x package", ratio, ratio >= PREFILL_TARGET))
    return out


def print_table(variant, res) -> list:
    names = list(res)
    peer = res.get("BlinkDL rwkv cpu fp32")
    keys = sorted({k for d in res.values() for k in d})
    width = max(len(n) for n in names) + 2
    print(f"\nRWKV-{variant}  L12 C768 H12 N64 V65536 F2688" + ("  D_mix 32 D_decay 64" if variant == "6.0" else ""))
    print("".ljust(24) + "".join(n.rjust(width) for n in names))
    for k in keys:
        cells = [res[n].get(k) for n in names]
        print(k.ljust(24) + "".join(("-" if c is None else f"{c:.4g}").rjust(width) for c in cells))
    if peer:  # ratios to the package: <1 is better for times, >1 for tokens/s
        for k in ("decode_ms_B1", *[k for k in keys if k.startswith("prefill")], "load_s"):
            cells = [res[n].get(k) / peer[k] if k in res[n] else None for n in names]
            print(f"{k} / package".ljust(24) + "".join(("-" if c is None else f"{c:.3g}x").rjust(width)
                                                      for c in cells))
    out = []
    for name, value, ok in verdicts(res, args_prefill):
        print(f"target {'met    ' if ok else 'not met'}  RWKV-{variant} {name}: {value:.3g}")
        out.append({"variant": variant, "target": name, "value": value, "met": bool(ok)})
    return out


args_prefill: list = []


def main() -> None:
    global args_prefill
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=sorted(SHAPES), default=["6.0"])
    p.add_argument("--storage", nargs="+", choices=["float32", "bfloat16", "int8"],
                   default=["float32", "bfloat16", "int8"], help="rwkv_np weight storages")
    p.add_argument("--no-package", action="store_true", help="rwkv_np only")
    p.add_argument("--prefill", type=int, nargs="*", default=[256], help="prompt lengths")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per round")
    p.add_argument("--prefill-repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--keep", metavar="DIR", help="write (and reuse) the weights here instead of a temp dir")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--engine", choices=["ours", "package"], help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.storage = args.storage if args.engine else list(dict.fromkeys(args.storage))
    if args.engine:
        args.storage, args.variant = args.storage[0], args.variants[0]
        return engine_round(args)
    args_prefill = args.prefill
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "argv": sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_avg_at_start": os.getloadavg()}
    import importlib.metadata
    info["versions"] = {m: importlib.metadata.version(m) for m in ("rwkv", "torch", "numpy", "numba")}
    result = {"info": info, "models": {}, "targets": []}
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            directory = os.path.join(args.keep, f"v{variant}") if args.keep else tmp
            res = bench_variant(args, variant, directory)
        result["models"][variant] = res
        result["targets"] += print_table(variant, res)
    result["info"]["load_avg_at_end"] = os.getloadavg()
    print("\n(2 shared cores: absolute times drift between runs; the ratios of one run are what count)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)


if __name__ == "__main__":
    main()
