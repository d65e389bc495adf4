"""Speed of rwkv_np's WorldTokenizer next to BlinkDL's TRIE_TOKENIZER (the `rwkv` pip package).

    python tools/bench_tokenizer.py                          # ../shared/data/tinyshakespeare.txt
    python tools/bench_tokenizer.py --file some.txt --json out.json

For each tokenizer: the time to load the vocabulary, then encode and decode of the whole file
(MB/s of UTF-8 and tokens/s), the best of --rounds rounds taken in turns (the machine is shared,
so absolute times drift; read the ratio), after checking that both give the same ids. For ours
also the first-call cost, each in a fresh process after Numba itself has started: with an empty
Numba cache (the compile) and with the cache filled (loading it). `rwkv` is needed for its half.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from rwkv_np.tokenizer import WorldTokenizer  # noqa: E402
from rwkv_np.world_vocab import WORLD_VOCAB_FILE, read_vocab  # noqa: E402

DEFAULT_FILE = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")

# Run in a fresh process: start Numba on a throw-away kernel (its one-off LLVM start-up belongs
# to no kernel), then time the first encode, which compiles ours or loads it from the cache.
FIRST_CALL = """
import time
from numba import njit
njit(lambda x: x + 1)(1)
from rwkv_np.tokenizer import WorldTokenizer
tok = WorldTokenizer.default()
t = time.perf_counter()
tok.encode("Hello world")
print(time.perf_counter() - t)
"""


def first_call_seconds(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--file", default=DEFAULT_FILE, help="UTF-8 text to encode")
    p.add_argument("--rounds", type=int, default=3, help="rounds of encode+decode per tokenizer")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    text = open(args.file, encoding="utf-8").read()
    n_bytes = len(text.encode("utf-8"))
    results = {"file": os.path.abspath(args.file), "bytes": n_bytes}

    with tempfile.TemporaryDirectory() as cache:
        results["ours_first_call_compile_s"] = first_call_seconds(cache)  # empty cache: compiles
        results["ours_first_call_cached_s"] = first_call_seconds(cache)   # filled by the call above

    t_read, vocab = timed(lambda: read_vocab(os.path.join(REPO, "rwkv_np", "assets", "rwkv-world",
                                                          WORLD_VOCAB_FILE)))
    t_build, ours = timed(lambda: WorldTokenizer(vocab))
    results["ours_load_s"] = t_read + t_build
    ours.encode("warm up")  # the compile or cache load is measured above, not here
    tokenizers = {"ours": ours}
    try:
        from rwkv import rwkv_tokenizer
    except ImportError:
        print("rwkv is not installed (pip install rwkv==0.8.32): timing rwkv_np alone", file=sys.stderr)
    else:
        file = os.path.join(os.path.dirname(rwkv_tokenizer.__file__), WORLD_VOCAB_FILE)
        results["reference_load_s"], tokenizers["reference"] = timed(lambda: rwkv_tokenizer.TRIE_TOKENIZER(file))

    best = {name: {"encode": float("inf"), "decode": float("inf")} for name in tokenizers}
    ids = {}
    for _ in range(args.rounds):  # in turns, so that drift of the machine hits both alike
        for name, tok in tokenizers.items():
            t, ids[name] = timed(lambda: tok.encode(text))
            best[name]["encode"] = min(best[name]["encode"], t)
            t, back = timed(lambda: tok.decode(ids[name]))
            best[name]["decode"] = min(best[name]["decode"], t)
            assert back == text, f"{name}: decode(encode(text)) != text"
    if "reference" in ids:
        results["ids_identical"] = ids["ours"] == ids["reference"]
    n_tokens = len(ids["ours"])
    results["tokens"] = n_tokens
    for name in tokenizers:
        for what in ("encode", "decode"):
            results[f"{name}_{what}_s"] = best[name][what]
            results[f"{name}_{what}_MB_per_s"] = n_bytes / best[name][what] / 1e6
            results[f"{name}_{what}_tokens_per_s"] = n_tokens / best[name][what]

    print(f"{os.path.basename(args.file)}: {n_bytes:,} bytes, {n_tokens:,} tokens"
          + (f", ids identical to TRIE_TOKENIZER: {results['ids_identical']}" if "ids_identical" in results else ""))
    print(f"{'':10} {'load s':>8} {'encode MB/s':>12} {'tokens/s':>12} {'decode MB/s':>12}")
    for name in tokenizers:
        print(f"{name:10} {results[f'{name}_load_s']:8.3f} {results[f'{name}_encode_MB_per_s']:12.2f}"
              f" {results[f'{name}_encode_tokens_per_s']:12,.0f} {results[f'{name}_decode_MB_per_s']:12.1f}")
    if "reference" in tokenizers:
        print(f"encode: ours {best['reference']['encode'] / best['ours']['encode']:.1f}x the reference's speed")
    print(f"ours, first call in a fresh process (after Numba's own start-up): compile"
          f" {results['ours_first_call_compile_s']:.2f} s, from the cache {results['ours_first_call_cached_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
