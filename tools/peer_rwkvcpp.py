"""rwkv.cpp (C, ggml) as a peer of tools/bench.py: the engine a CPU user picks today.

    python tools/bench.py model --shape 169m --peers              # rwkv.cpp in $TMPDIR/rwkvcpp
    python tools/bench.py model --shape 169m --peers --rwkvcpp DIR

Its code is not part of rwkv_np: DIR is a tree built by ../shared/tools/build_rwkvcpp.sh (rwkv.cpp
4358e709 with the ggml it pins, -march=native, OpenMP), holding build/librwkv.so and the Python
bindings in src/python. When DIR has no library and that script exists beside the checkout, it is
run (with the git dirs of github:RWKV/rwkv.cpp and github:ggerganov/ggml from RWKVCPP_GIT /
GGML_GIT, default ../.mirror/*/repo); otherwise one line says how to get it.

Same weights: the BlinkDL .pth that bench.py writes for BlinkDL's `rwkv` (torch.save of the HF
directory's float32 tensors) goes through rwkv.cpp's own converter to FP32 and FP16 files, and
FP16 through its quantizer to Q8_0 and Q5_1, as rwkv.cpp's README does (its quantized files keep
emb and head in FP16). Each format is one engine, "rwkv.cpp FMT", run like every other engine of
bench.py: fresh process, same prompt, same thread count (thread_count), decode = rwkv_eval per
token with the state and logits buffers reused, prefill = rwkv_eval_sequence_in_chunks (chunk 16,
its default; one eval_sequence of 256 tokens aborts in ggml) up to the last token's logits.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join(REPO, "..", "shared", "tools", "build_rwkvcpp.sh")
DEFAULT_DIR = os.path.join(tempfile.gettempdir(), "rwkvcpp")  # the build script's default DEST
TREE_ENV = "RWKV_NP_BENCH_RWKVCPP"  # how the engine processes learn where the tree is
FORMATS = ("FP32", "FP16", "Q8_0", "Q5_1")
# rwkv_np storage -> the rwkv.cpp format it is held against (issue 19's pairs)
PAIRS = {"float32": "FP32", "bfloat16": "FP16", "int8": "Q8_0", "int4": "Q5_1", "int5": "Q5_1"}
PREFILL_VS_FP32, BATCH8_VS_SINGLE = 1.5, 3.0  # issue 19: prompts >= 1.5x FP32, batch-8 >= 3x


def locate(directory: str | None) -> str:
    """The rwkv.cpp tree to use (built first if it can be); exits with one line if it cannot."""
    tree = os.path.abspath(directory or DEFAULT_DIR)
    if os.path.isfile(os.path.join(tree, "build", "librwkv.so")):
        return tree
    rwkv_git = os.environ.get("RWKVCPP_GIT", os.path.join(REPO, "..", ".mirror", "RWKV+rwkv.cpp", "repo"))
    ggml_git = os.environ.get("GGML_GIT", os.path.join(REPO, "..", ".mirror", "ggerganov+ggml", "repo"))
    if not os.path.isfile(BUILD_SCRIPT):
        sys.exit(f"bench: no rwkv.cpp in {tree}: build it with build_rwkvcpp.sh RWKV_GIT GGML_GIT {tree} "
                 f"(from the shared tools; git dirs of github:RWKV/rwkv.cpp and github:ggerganov/ggml), "
                 f"or pass --rwkvcpp DIR")
    print(f"building rwkv.cpp into {tree} ({BUILD_SCRIPT})", flush=True)
    out = subprocess.run(["bash", BUILD_SCRIPT, rwkv_git, ggml_git, tree], capture_output=True, text=True)
    if out.returncode != 0 or not os.path.isfile(os.path.join(tree, "build", "librwkv.so")):
        sys.exit(f"bench: building rwkv.cpp failed: {(out.stdout + out.stderr).strip()[-1500:]}")
    return tree


def make_files(pth: str, tree: str, out_dir: str, formats=FORMATS) -> dict[str, str]:
    """{format: directory holding model.bin}, converted from the BlinkDL .pth with rwkv.cpp's
    converter (needs torch) and quantizer. Written once, outside the timed processes."""
    dirs = {f: os.path.join(out_dir, f"rwkvcpp-{f}") for f in formats}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    convert = os.path.join(tree, "src", "python", "convert_pytorch_to_ggml.py")
    fp16 = os.path.join(dirs.get("FP16", out_dir), "model.bin" if "FP16" in dirs else "FP16.bin")
    if "FP32" in dirs:
        _run([sys.executable, convert, pth, os.path.join(dirs["FP32"], "model.bin"), "FP32"])
    if set(dirs) - {"FP32"}:  # FP16 itself, and the quantizer's source
        _run([sys.executable, convert, pth, fp16, "FP16"])
    for f in formats:  # in a process of its own: the library prints every tensor on stdout
        if f.startswith("Q"):
            _run([sys.executable, os.path.abspath(__file__), "_quantize", tree, fp16,
                  os.path.join(dirs[f], "model.bin"), f])
    return dirs


def _run(cmd) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[1:2])} failed: {out.stderr.strip()[-1500:]}")


def _library(tree: str):
    sys.path.insert(0, os.path.join(tree, "src", "python"))
    from rwkv_cpp import rwkv_cpp_shared_library
    return rwkv_cpp_shared_library.RWKVSharedLibrary(os.path.join(tree, "build", "librwkv.so"))


class RwkvCpp:
    """One rwkv.cpp model file, `directory`/model.bin, on the process's thread count."""
    def __init__(self, directory, storage=None, threads: int | None = None):
        import numba  # bench's engine_round has set the round's thread count there
        lib = _library(os.environ[TREE_ENV])
        from rwkv_cpp import rwkv_cpp_model
        threads = threads or numba.get_num_threads()
        self.name = f"rwkv.cpp {os.path.basename(os.path.normpath(directory)).removeprefix('rwkvcpp-')}"
        self.model = rwkv_cpp_model.RWKVModel(lib, os.path.join(directory, "model.bin"), thread_count=threads)

    def prefill(self, ids):  # ids (T,) -> None: up to the last token's logits
        self.model.eval_sequence_in_chunks([int(i) for i in ids], None, use_numpy=True)

    def decode(self, ids, B, steps) -> float:  # B = 1 only: rwkv.cpp has no batched decode
        logits, state = self.model.eval_sequence_in_chunks([int(i) for i in ids], None, use_numpy=True)
        t = time.perf_counter()
        for _ in range(steps):
            self.model.eval(int(ids[-1]), state, state, logits)
        return time.perf_counter() - t


def verdicts(res: dict) -> list:
    """Issue 19's targets, each (name, measured ratio, met): B = 1 decode of each rwkv_np storage
    against its rwkv.cpp format, prompts against rwkv.cpp FP32, batch-8 against FP32's rate."""
    ours = {k.split()[-1]: v for k, v in res.items() if k.startswith("rwkv_np")}
    cpp = {k.split()[-1]: v for k, v in res.items() if k.startswith("rwkv.cpp")}
    out = []
    for s, f in PAIRS.items():
        if s in ours and f in cpp:
            r = ours[s]["decode_ms_B1"] / cpp[f]["decode_ms_B1"]
            out.append((f"decode {s} <= 1.0 x rwkv.cpp {f}", r, r <= 1.0))
    if "FP32" not in cpp:
        return out
    for s, d in ours.items():
        for key in sorted(k for k in d if k.startswith("prefill_tok_s") and k in cpp["FP32"]):
            r = d[key] / cpp["FP32"][key]
            out.append((f"prefill {s} {key[14:]} >= {PREFILL_VS_FP32} x rwkv.cpp FP32", r, r >= PREFILL_VS_FP32))
        if "decode_ms_B8" in d:
            r = 8 * cpp["FP32"]["decode_ms_B1"] / d["decode_ms_B8"]
            out.append((f"batch-8 tokens/s ({s}) >= {BATCH8_VS_SINGLE} x rwkv.cpp FP32 single", r,
                        r >= BATCH8_VS_SINGLE))
    return out



if __name__ == "__main__" and sys.argv[1:2] == ["_quantize"]:  # TREE SRC DST FORMAT
    _library(sys.argv[2]).rwkv_quantize_model_file(*sys.argv[3:6])
