"""rwkv_np benchmark: kernel micro-benchmarks, then whole models next to their peers.

    python tools/bench.py kernels                       # decode matvec GB/s per 169M shape and
                                                        # storage, streaming-read ceiling, sgemm
    python tools/bench.py model --shape 169m            # random 169M model, every storage
    python tools/bench.py model --model DIR --peers     # an HF model dir, with HF transformers
                                                        # and BlinkDL's rwkv on the same weights
    python tools/bench.py model --shape v7-0.1b --peers # RWKV-7 (bench_v7.py), BlinkDL's rwkv
                                                        # RWKV_x070 the peer

Machines here are shared, so absolute times drift: the engines take turns, round by round, each
turn in a fresh process (no engine's idle thread pool competes with the next one), and the best
round of each is kept; read the ratios. Results are
printed as a table and written as JSON (--json). Random models are built directly in NumPy.
torch / transformers / rwkv are imported only for --peers.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PEER_GOMP = os.environ.get("GOMP_SPINCOUNT")  # as given, before rwkv_np sets its own default
from rwkv_np import set_threads  # noqa: E402
from rwkv_np.linear import linear  # noqa: E402
from rwkv_np.convert import convert, quantize  # noqa: E402
from rwkv_np.storage import STORAGES, prepare_weight  # noqa: E402
import peer_rwkvcpp  # noqa: E402
from bench_v7 import V7_SHAPES, BlinkDL7, is_v7, random_v7_dir, set_package_env, v7_matrices, write_v7_pth  # noqa: E402,E501

SHAPES = {"169m": (12, 768), "430m": (24, 1024), "1b5": (24, 2048)}  # name: (L, H), V = 50277
KERNEL_SHAPES = [(768, 768), (3072, 768), (768, 3072), (50277, 768)]  # the 169M projections
GB = 1e9


def best_time(fn, repeat=5, min_time=0.2) -> float:
    """Fastest of `repeat` (or more, until `min_time`) calls, after one warm-up call."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------- ceilings and kernels

@njit(parallel=True, fastmath=True, cache=True)
def _stream_sum(A):  # A (R, C) float32 -> (R,): reads every element once, rows split over cores
    out = np.empty(A.shape[0], np.float32)
    for i in prange(A.shape[0]):
        acc = np.float32(0.0)
        for j in range(A.shape[1]):
            acc += A[i, j]
        out[i] = acc
    return out


def ceilings(threads: int) -> dict:
    """Streaming-read GB/s (all threads and one) of 512 MB, and sgemm GFLOP/s on 256x768x3072 as
    prompts run it (rwkv_np.linear: row blocks on our pool, single-threaded OpenBLAS in each), so
    that a prompt's GFLOP/s reads against the rate its own products reach."""
    A = np.random.default_rng(0).standard_normal((1 << 17, 1024), dtype=np.float32)
    res = {"read_GBps": A.nbytes / best_time(lambda: _stream_sum(A), 3) / GB}
    set_threads(1)
    res["read_GBps_1thread"] = A.nbytes / best_time(lambda: _stream_sum(A), 3) / GB
    set_threads(threads)
    del A
    x = np.random.default_rng(1).standard_normal((256, 768), dtype=np.float32)
    W = np.random.default_rng(2).standard_normal((3072, 768), dtype=np.float32)
    res["sgemm_GFLOPs"] = 2 * 256 * 768 * 3072 / best_time(lambda: linear(x, W), 5) / GB
    return res


def kernel_bench(storages) -> list:
    """Per 169M shape and storage: decode (N=1) GB/s of `linear`, cycling through enough copies
    of the matrix (>= 256 MB) that it never sits in cache, as in a real token; for float32 also
    numpy's BLAS W @ x. Then N=8 (batched decode) and N=256 (prefill) through `linear`."""
    rng, rows = np.random.default_rng(0), []
    for out, n_in in KERNEL_SHAPES:
        W = rng.standard_normal((out, n_in), dtype=np.float32) * 0.05
        copies = max(1, (256 << 20) // W.nbytes)
        x = {N: rng.standard_normal((N, n_in), dtype=np.float32) for N in (1, 8, 256)}
        for storage in storages:
            Ws = [prepare_weight(W + np.float32(1e-3 * c), storage) for c in range(copies)]
            nbytes = Ws[0].nbytes

            def cycle(fn):
                return best_time(lambda: [fn(w) for w in Ws], 3) / copies

            row = {"shape": f"{out}x{n_in}", "storage": storage, "MB": nbytes / 1e6}
            t1 = cycle(lambda w: linear(x[1], w))
            row.update(N1_us=t1 * 1e6, N1_GBps=nbytes / t1 / GB)
            if storage in ("float32", "float64"):
                xv = x[1][0].astype(storage)
                row["blas_gemv_GBps"] = nbytes / cycle(lambda w: w @ xv) / GB
            t8 = cycle(lambda w: linear(x[8], w))
            row.update(N8_us=t8 * 1e6, N8_vs_N1=t8 / t1)
            t256 = best_time(lambda: linear(x[256], Ws[0]), 3)
            row["N256_GFLOPs"] = 2 * 256 * out * n_in / t256 / GB
            rows.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)
            del Ws
    return rows


# ---------------------------------------------------------------- models and engines

MATRICES = ("att_key", "att_value", "att_receptance", "att_output",
            "ffn_key", "ffn_receptance", "ffn_value")  # Block fields that go through `linear`


def random_model_dir(shape: str, directory: str) -> None:
    """Write an HF-layout model of a published shape with random weights in trained ranges."""
    if shape in V7_SHAPES:
        return random_v7_dir(shape, directory)
    from rwkv_np import RwkvConfig
    from rwkv_np.convert import save_pretrained
    from rwkv_np.v4.names import expected_shapes
    L, H = SHAPES[shape]
    config = RwkvConfig(vocab_size=50277, hidden_size=H, num_hidden_layers=L)
    rng, tensors = np.random.default_rng(0), {}
    for name, s in expected_shapes(config).items():
        if "time_decay" in name:
            x = rng.uniform(-6, 3, s)
        elif "time_first" in name:
            x = rng.uniform(-3, 3, s)
        elif "time_mix" in name:
            x = rng.uniform(0, 1, s)
        elif name.endswith(".weight") and len(s) == 1:   # LayerNorm
            x = rng.uniform(0.5, 1.5, s)
        else:
            x = rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
        tensors[name] = np.asarray(x, np.float32)
    save_pretrained(directory, config, tensors)


class Ours:
    """rwkv_np with its matrices (not the embedding) in `storage`."""
    def __init__(self, directory, storage):
        from rwkv_np import RwkvForCausalLM
        dtype = "float64" if storage == "float64" else "float32"
        self.name = f"rwkv_np {storage}"
        self.model = RwkvForCausalLM.from_pretrained(directory, dtype=dtype, weights=storage)
        if hasattr(self.model, "rwkv"):
            mats = [getattr(b, f) for b in self.model.rwkv.blocks for f in MATRICES] + [self.model.head]
        else:
            mats = v7_matrices(self.model)
        self.weight_bytes = sum(m.nbytes for m in mats)
        self.layer_params = sum(m.shape[0] * m.shape[1] for m in mats[:-1])

    def prefill(self, ids):  # ids (T,) -> None
        # As generation prefills: the head only where the next token is read (BlinkDL's forward
        # also returns the last position's logits only).
        self.model(np.asarray(ids)[None], logits_to_keep=1)

    def decode(self, ids, B, steps) -> float:  # prompt ids (T,), then `steps` steps of B rows
        """Seconds taken by the single-token steps (the prompt is not timed)."""
        state = self.model(np.tile(ids, (B, 1))).state
        tok = np.full((B, 1), ids[-1])
        t = time.perf_counter()
        for _ in range(steps):
            state = self.model(tok, state=state).state
        return time.perf_counter() - t


class HF:
    """Hugging Face transformers' RwkvForCausalLM, fp32 on CPU (B=1: its B>1 decode is buggy)."""
    def __init__(self, directory, storage="float32"):
        import torch
        import transformers
        self.torch, self.name = torch, "HF transformers fp32"
        self.model = transformers.RwkvForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

    def prefill(self, ids):
        with self.torch.no_grad():
            self.model(self.torch.tensor([list(ids)]))

    def decode(self, ids, B, steps):
        t = self.torch
        with t.no_grad():
            state = self.model(t.tensor([list(ids)]), use_cache=True).state
            tok = t.tensor([[int(ids[-1])]])
            start = time.perf_counter()
            for _ in range(steps):
                state = self.model(tok, state=state, use_cache=True).state
            return time.perf_counter() - start


class BlinkDL:
    """BlinkDL's `rwkv` pip package, strategy 'cpu fp32', from a .pth written next to the model."""
    def __init__(self, directory, storage="float32"):
        os.environ.setdefault("RWKV_JIT_ON", "1")
        os.environ["RWKV_CUDA_ON"] = "0"
        from rwkv.model import RWKV
        self.name = "BlinkDL rwkv cpu fp32"
        self.model = RWKV(model=write_pth(directory), strategy="cpu fp32", verbose=False)

    def prefill(self, ids):
        self.model.forward([int(i) for i in ids], None)

    def decode(self, ids, B, steps):
        _, state = self.model.forward([int(i) for i in ids], None)
        t = time.perf_counter()
        for _ in range(steps):
            _, state = self.model.forward([int(ids[-1])], state)
        return time.perf_counter() - t


def write_pth(directory) -> str:
    """BlinkDL-named copy of an HF model dir as model.pth (torch.save); returns its path."""
    path = os.path.join(directory, "model.pth")
    if not os.path.exists(path):
        import torch
        from rwkv_np.load import read
        blink = {}
        for name, x in read(directory)[2].items():
            n = (name.removeprefix("rwkv.").replace("embeddings.", "emb.", 1)
                 .replace(".pre_ln.", ".ln0.").replace(".attention.", ".att.")
                 .replace(".feed_forward.", ".ffn."))
            for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
                if n.endswith(f".time_mix_{long}"):
                    n = n[:-len(long)] + short
            blink[n] = torch.from_numpy(np.array(x, np.float32))
        torch.save(blink, path)
    return path


ENGINES = {"ours": Ours, "hf": HF, "blinkdl": BlinkDL, "rwkvcpp": peer_rwkvcpp.RwkvCpp}


def engine_round(args) -> None:
    """One round of one engine, in a fresh process (so that no engine's thread pool, e.g.
    torch's OpenMP threads still spinning, slows down the next): load, warm up, time; JSON out."""
    set_threads(args.threads)
    v7 = is_v7(args.dir)
    if args.engine != "ours" and PEER_GOMP is None:  # a peer's libgomp (torch's, rwkv.cpp's)
        os.environ.pop("GOMP_SPINCOUNT", None)         # keeps its default spin, not rwkv_np's
    if args.engine in ("hf", "blinkdl"):  # library imports are not load time
        import torch
        torch.set_num_threads(args.threads)
        import transformers  # noqa: F401
        os.environ.setdefault("RWKV_JIT_ON", "1")
        os.environ["RWKV_CUDA_ON"] = "0"
        if v7:
            set_package_env()
        import rwkv.model  # noqa: F401
    before = peak_rss_mb()
    t = time.perf_counter()
    engine = (BlinkDL7 if v7 and args.engine == "blinkdl" else ENGINES[args.engine])(args.dir, args.storage[0])
    res = {"name": engine.name, "load_s": time.perf_counter() - t}
    ids = np.random.default_rng(0).integers(0, 50000, max(args.prefill, default=4))
    batches = (1, 8) if args.engine == "ours" else (1,)  # HF's B > 1 decode is broken
    engine.decode(ids[:4], 1, 1)  # touches every weight once
    file_mb = sum(os.path.getsize(os.path.join(args.dir, f)) for f in os.listdir(args.dir)
                  if f.endswith((".safetensors", ".bin"))) / 2**20
    # Peak RSS above what the process held before loading (interpreter, numpy, numba, torch),
    # after one token, as a multiple of the weights file: 1 = the file mapped once, no copies.
    res["load_rss_vs_file"] = (peak_rss_mb() - before) / file_mb
    for T in args.prefill:  # warm-up: JIT compilation. Twice: TorchScript (BlinkDL's RWKV-7)
        engine.prefill(ids[:T])  # profiles the first call of a shape and optimizes on the next;
        engine.prefill(ids[:T])  # timed after one warm-up, its 256-token prompt took 5.0 s, then 1.1 s
    for B in batches:
        engine.decode(ids[:4], B, 1)
    for T in args.prefill:  # the best of --prefill-repeats calls
        best = float("inf")
        for _ in range(args.prefill_repeats):
            t = time.perf_counter()
            engine.prefill(ids[:T])
            best = min(best, time.perf_counter() - t)
        res[f"prefill_tok_s_T{T}"] = T / best
    for B in batches:  # seconds of the single-token steps, not of the prompt
        res[f"decode_ms_B{B}"] = engine.decode(ids[:4], B, args.steps) / args.steps * 1e3
    res["peak_rss_MB"] = peak_rss_mb()  # after the longest prompt too
    if args.engine == "ours":
        res["weight_bytes"], res["layer_params"] = engine.weight_bytes, engine.layer_params
        res["huge_pages_vs_file"] = file_pmd_mapped_mb() / file_mb  # 1: the TLB sees 2 MB pages
    print(json.dumps(res))


def file_pmd_mapped_mb() -> float:
    """MB of this process's file maps mapped as 2 MB pages (Linux's FilePmdMapped; 0 elsewhere):
    the page cache's 2 MB folios of the weights file (safetensors.py asks for them). Each 4 KB
    page instead costs decode a TLB miss every 4 KB it streams."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("FilePmdMapped:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: after fork + exec, Linux's
    ru_maxrss still counts the parent's memory."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the model benchmark

def bench_models(args, directory) -> dict:
    """Rounds; in each, every engine once, each in its own process; keep each engine's best."""
    v7 = is_v7(directory)
    peers = [("blinkdl", "float32")] if v7 else [("hf", "float32"), ("blinkdl", "float32")]
    engines = [("ours", s) for s in args.storage] + (peers if args.peers else [])
    if args.peers:
        (write_v7_pth if v7 else write_pth)(directory)  # once, outside the timed processes
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        # bf16, int8, int4 and int5 run from files of their own, as deployed (`rwkv-np convert --dtype
        # bfloat16`, `rwkv-np quantize [--bits 4]`): memory-mapped, not converted at every load.
        dirs = {s: directory for s in args.storage}
        if "bfloat16" in dirs:
            dirs["bfloat16"] = os.path.join(tmp, "bf16")
            convert(directory, dirs["bfloat16"], "bfloat16")
        if "int8" in dirs:
            dirs["int8"] = os.path.join(tmp, "int8")
            quantize(directory, dirs["int8"])
        for bits in (4, 5):  # `rwkv-np quantize --bits 4` / `--bits 5`
            if f"int{bits}" in dirs:
                dirs[f"int{bits}"] = os.path.join(tmp, f"int{bits}")
                quantize(directory, dirs[f"int{bits}"], bits=bits)
        if args.peers:  # rwkv.cpp FP32, FP16, Q8_0, Q5_1 from the same .pth (its converter reads v4 and v7)
            cpp = peer_rwkvcpp.make_files(os.path.join(directory, "model.pth"), args.rwkvcpp, tmp)
            engines += [("rwkvcpp", f) for f in cpp]
            dirs.update(cpp)
        for r in range(args.rounds):
            for kind, storage in engines:
                cmd = [sys.executable, os.path.abspath(__file__), "_engine", "--engine", kind,
                       "--dir", dirs[storage] if kind in ("ours", "rwkvcpp") else directory,
                       "--storage", storage if kind == "ours" else "float32",  # rwkvcpp: its --dir
                       "--threads", str(args.threads), "--steps", str(args.steps),
                       "--prefill-repeats", str(args.prefill_repeats), "--prefill", *map(str, args.prefill)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"bench: {kind} {storage} failed: {out.stderr.strip()[-2000:]}")
                got = json.loads(out.stdout.strip().splitlines()[-1])
                d = res.setdefault(got.pop("name"), {})
                for key, value in got.items():  # best round: fastest, least memory
                    better = max if key.startswith("prefill") else min
                    d[key] = better(d.get(key, value), value)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    for name, d in res.items():
        if "weight_bytes" in d:
            d["weight_MB"] = d.pop("weight_bytes") / 1e6
            d["decode_GBps_B1"] = d["weight_MB"] / d["decode_ms_B1"]  # MB/ms = GB/s
            params = d.pop("layer_params")
            for T in args.prefill:  # the head runs on the last position only
                d[f"prefill_GFLOPs_T{T}"] = 2 * params * d[f"prefill_tok_s_T{T}"] / GB
            d["batch8_vs_batch1_throughput"] = 8 * d["decode_ms_B1"] / d["decode_ms_B8"]
    return res


TARGETS = {"float32": 0.4, "bfloat16": 0.25, "int8": 0.2}  # decode ms/token vs the best peer
PREFILL_TARGET = 1.2  # prefill fp32 tokens/s vs the best peer
V7_TARGETS, V7_PREFILL_TARGET = {"float32": 0.5}, 1.5  # issue 15 item 5: RWKV-7 vs RWKV_x070


def verdicts(res, ceil, v7=False) -> list:
    """The performance targets, each with the measured number (B=1 decode vs the best torch peer)."""
    targets, prefill_target = (V7_TARGETS, V7_PREFILL_TARGET) if v7 else (TARGETS, PREFILL_TARGET)
    out, ours = [], {k.split()[-1]: v for k, v in res.items() if k.startswith("rwkv_np")}
    peers = [v for k, v in res.items() if not k.startswith(("rwkv_np", "rwkv.cpp"))]  # torch
    if peers:
        best = min(p["decode_ms_B1"] for p in peers)
        for s, limit in targets.items():
            if s in ours:
                ratio = ours[s]["decode_ms_B1"] / best
                out.append((f"decode {s} <= {limit} x best peer", ratio, ratio <= limit))
        if "float32" in ours:
            for T in (256, 1024):
                key = f"prefill_tok_s_T{T}"
                if key in ours["float32"]:
                    ratio = ours["float32"][key] / max(p[key] for p in peers)
                    out.append((f"prefill fp32 T={T} >= {prefill_target} x best peer", ratio,
                                ratio >= prefill_target))
    if "float32" in ours and ceil:
        frac = ours["float32"]["decode_GBps_B1"] / ceil["read_GBps"]
        out.append(("decode fp32 bandwidth >= 0.7 x streaming ceiling", frac, frac >= 0.7))
        for key in sorted(k for k in ours["float32"] if k.startswith("prefill_GFLOPs")):
            frac = ours["float32"][key] / ceil["sgemm_GFLOPs"]
            out.append((f"prefill fp32 {key[15:]} >= 0.75 x sgemm ceiling", frac, frac >= 0.75))
    if "float32" in ours and "load_rss_vs_file" in ours["float32"]:
        r = ours["float32"]["load_rss_vs_file"]
        out.append(("load float32 + 1 token: RSS above baseline <= 1.15 x file", r, r <= 1.15))
    for s, d in ours.items():
        out.append((f"batch-8 decode throughput >= 5 x batch-1 ({s})",
                    d["batch8_vs_batch1_throughput"], d["batch8_vs_batch1_throughput"] >= 5))
    return out


def print_table(res) -> None:
    keys = sorted({k for d in res.values() for k in d}, key=lambda k: (k.split("_")[0], k))
    width = max(len(n) for n in res) + 2
    print("\n" + "".ljust(30) + "".join(n.rjust(width) for n in res))
    for k in keys:
        cells = [res[n].get(k) for n in res]
        print(k.ljust(30) + "".join(("-" if c is None else f"{c:.3g}" if isinstance(c, float)
                                     else str(c)).rjust(width) for c in cells))


V56_SHAPES = {"v6-0.1b": "6.0", "v5.2-0.1b": "5.2"}  # RWKV-6 / 5.2 0.1B shapes: bench_v56.py's


def bench_v56(args) -> None:
    """The RWKV-6 / 5.2 shapes run in tools/bench_v56.py (their peer is BlinkDL's package, which
    --peers asks for here; rwkv.cpp's converter does not read them): the same protocol, its
    table and targets. Storages it does not have (float64, float16, int4, int5) are left out."""
    import bench_v56
    bench_v56.PEER_GOMP = PEER_GOMP  # as given to this process, not rwkv_np's default
    storages = [s for s in args.storage if s in ("float32", "bfloat16", "int8")] or ["float32"]
    argv = ["--variants", V56_SHAPES[args.shape], "--storage", *storages, "--prefill", *map(str, args.prefill or [256]),
            "--steps", str(args.steps), "--prefill-repeats", str(args.prefill_repeats), "--rounds", str(args.rounds),
            "--threads", str(args.threads)] + ([] if args.peers else ["--no-package"]) + \
        (["--json", args.json] if args.json else [])
    sys.argv = [bench_v56.__file__, *argv]
    bench_v56.main()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=["kernels", "model", "_engine"])
    p.add_argument("--shape", choices=sorted(SHAPES) + sorted(V7_SHAPES) + sorted(V56_SHAPES), default="169m",
                   help="random model shape (v7-*: RWKV-7; v6-0.1b, v5.2-0.1b: tools/bench_v56.py runs them)")
    p.add_argument("--model", help="an HF model directory instead of a random model")
    p.add_argument("--storage", nargs="+", choices=STORAGES, default=["float32", "bfloat16", "int8", "int4", "int5"])
    p.add_argument("--peers", action="store_true", help="also run HF transformers, BlinkDL rwkv and rwkv.cpp")
    p.add_argument("--rwkvcpp", metavar="DIR", help="rwkv.cpp tree built by build_rwkvcpp.sh (default: "
                   "$TMPDIR/rwkvcpp, built there if the shared script exists)")
    p.add_argument("--prefill", type=int, nargs="*", default=[64, 256, 1024],
                   help="prompt lengths (none: decode only)")
    p.add_argument("--steps", type=int, default=16, help="decode steps per round")
    p.add_argument("--prefill-repeats", type=int, default=2, help="timed prompts per length and round (best kept)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--engine", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shape in V56_SHAPES and args.what == "model":
        return bench_v56(args)
    args.threads = set_threads(args.threads)
    if args.what == "_engine":
        return engine_round(args)
    if args.peers:
        import importlib.util
        missing = [m for m in ("transformers", "rwkv") if importlib.util.find_spec(m) is None]
        try:
            import torch
        except ImportError:
            missing.insert(0, "torch")
        if missing:  # one line, not a ModuleNotFoundError from deep inside a round
            p.error(f"--peers runs HF transformers and BlinkDL's rwkv on torch; not installed: "
                    f"{', '.join(missing)} (pip install '.[dev]')")
        torch.set_num_threads(args.threads)
        args.rwkvcpp = os.environ[peer_rwkvcpp.TREE_ENV] = peer_rwkvcpp.locate(args.rwkvcpp)
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "argv": sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    ceil = ceilings(args.threads)
    print("ceilings: " + ", ".join(f"{k}={v:.1f}" for k, v in ceil.items()), flush=True)
    result = {"info": info, "ceilings": ceil}
    if args.what == "kernels":
        result["kernels"] = kernel_bench(args.storage)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            directory = args.model or tmp
            if not args.model:
                random_model_dir(args.shape, tmp)
            result["models"] = bench_models(args, directory)
            v7 = is_v7(directory)
        print_table(result["models"])
        result["targets"] = []
        for name, value, ok in verdicts(result["models"], ceil, v7) + peer_rwkvcpp.verdicts(result["models"]):
            print(f"target {'met    ' if ok else 'not met'}  {name}: {value:.3g}")
            result["targets"].append({"target": name, "value": value, "met": bool(ok)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)


if __name__ == "__main__":
    main()
