"""Train the small byte-level RWKV-4 demo model that ships inside rwkv_np (rwkv_np/assets/).

Data: ../shared/data/tinyshakespeare.txt relative to the repo root; the first 90% of its bytes
train, the last 10% are held out. Tokens are bytes (vocab_size 256, no tokenizer.json).

The model is written in torch with Hugging Face's module and parameter names, so its state_dict
keys are the HF checkpoint keys (`rwkv.blocks.0.attention.time_decay`, `head.weight`, ...).
Training uses the parallel ("GPT-mode") form of WKV: one masked matrix product per chunk instead
of a loop over tokens. It computes exactly HF's RWKV-4 forward (see shared/RWKV4_SPEC.md); the
export step checks it against the token-by-token log-space recurrence and, when installed,
against transformers' RwkvForCausalLM.

Batches are B byte streams read in consecutive windows of --ctx bytes with the recurrent state
carried (detached) from one window to the next, so the model learns to use a long state as
rwkv_np does when it scores a whole file; each stream jumps to a random place, with an empty
state, after a random number of windows.

Export writes config.json + model.safetensors (16-bit) to --out and, from the SAME rounded
weights computed in float32, the reference logits of a few held-out windows that
tests/test_demo_model.py compares rwkv_np against.

The budget is --steps or --minutes, whichever runs out first; the learning rate follows the
fraction used, so a slow machine still finishes its cosine schedule. The shipped model is
`python tools/train_tiny.py` with the defaults (seed 0); on a machine fast enough to finish the
--steps inside --minutes the run is reproducible step for step.

torch is a tool-only dependency:  python tools/train_tiny.py --help
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # rwkv_np writes and re-reads the exported model
EMPTY_MAX = -1e38  # "max" of an empty WKV state, as in HF's CPU kernel: exp(-1e38 - x) == 0


# ----------------------------------------------------------------------------- WKV
def wkv_parallel(time_decay, time_first, k, v, state):
    """RWKV-4 WKV over a whole chunk at once; k, v (B, T, A); state = (num, den, max) each (B, A).

    Exact recurrence per channel, w = -exp(time_decay), u = time_first:
        out_t = (N + e^(u+k_t) v_t) / (D + e^(u+k_t)),  N <- e^w N + e^k_t v_t,  D <- e^w D + e^k_t
    with the incoming state N = num·e^max, D = den·e^max. Unrolled, out_t is a weighted average
    of v_0..v_t and of the incoming state, with log-weights (t-1-i)w + k_i for i < t, u + k_t for
    i = t and max + t·w for the state. The state is treated as a virtual token j = 0 (key = max,
    value num, "one" den) in front of the real tokens j = 1..T, so all the past-token terms are
    one causal Toeplitz product per channel: M[t, j] = e^((t-1-j)w) for j < t (t 1-based).
    Every term is scaled by e^-m with m = the largest key of the chunk (detached), so
    exponentials stay finite; the common factor cancels in the ratio.
    Returns out (B, T, A) and the new state (num, den, max), each (B, A), computed in log space:
    max_T = max_j (T-j)w + k_j, num_T = sum_j e^((T-j)w + k_j - max_T) v_j.
    """
    num0, den0, max0 = state
    B, T, A = k.shape
    w = -torch.exp(time_decay)                                   # (A)
    keys = torch.cat([max0[:, None, :], k], dim=1)               # (B, T+1, A) virtual token first
    m = keys.max(dim=1, keepdim=True).values.detach()            # (B, 1, A)
    ek = torch.exp(keys - m)                                     # (B, T+1, A)
    vals = torch.cat([num0[:, None, :], v], dim=1)               # (B, T+1, A)
    ones = torch.cat([den0[:, None, :], torch.ones_like(v)], dim=1)
    # Toeplitz decay matrix, rows = real tokens t = 1..T, columns = j = 0..T.
    t = torch.arange(1, T + 1, device=k.device)[:, None]
    j = torch.arange(0, T + 1, device=k.device)[None, :]
    lag = (t - 1 - j).clamp(min=0).to(k.dtype)                   # (T, T+1)
    decay = torch.exp(lag[None] * w[:, None, None]) * (j < t)     # (A, T, T+1)
    x = torch.cat([ek * vals, ek * ones], dim=0).permute(2, 1, 0)  # (A, T+1, 2B)
    past = torch.bmm(decay, x).permute(2, 1, 0)                  # (2B, T, A)
    now = torch.exp(time_first + k - m)                          # (B, T, A) the i = t term
    out = (past[:B] + now * v) / (past[B:] + now)
    with torch.no_grad():                                        # state for the next chunk
        lags = torch.arange(T, -1, -1, device=k.device, dtype=k.dtype)  # T-j for j = 0..T
        logw = keys + lags[None, :, None] * w                    # (B, T+1, A)
        new_max = logw.max(dim=1).values
        e = torch.exp(logw - new_max[:, None, :])
        new_state = ((e * vals).sum(1), (e * ones).sum(1), new_max)
    return out, new_state


def wkv_recurrent(time_decay, time_first, k, v, state):
    """The same WKV one token at a time in HF's stabilized log-space form (slow; the check)."""
    a, b, p = state
    w = -torch.exp(time_decay)
    outs = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        q = torch.maximum(p, time_first + kt)
        e1, e2 = torch.exp(p - q), torch.exp(time_first + kt - q)
        outs.append((e1 * a + e2 * vt) / (e1 * b + e2))
        q = torch.maximum(p + w, kt)
        e1, e2 = torch.exp(p + w - q), torch.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    return torch.stack(outs, dim=1), (a, b, p)


# ----------------------------------------------------------------------------- model
def shift(x, last):
    """x (B, T, H), last (B, H) -> x delayed by one step, with `last` in front."""
    return torch.cat([last[:, None, :], x[:, :-1]], dim=1)


def mix(x, sx, m):
    return x * m + sx * (1 - m)


class Attention(nn.Module):
    def __init__(self, H, A, layer, L):
        super().__init__()
        # RWKV-4's initialization: decay speeds from fast to slow across channels, slower in
        # deeper layers; time_first log(0.3) with a zigzag; time_mix ramps over the channels.
        r01, r10 = layer / max(L - 1, 1), 1 - layer / L
        h = torch.arange(A) / max(A - 1, 1)
        self.time_decay = nn.Parameter(-5 + 8 * h ** (0.7 + 1.3 * r01))
        zigzag = ((torch.arange(A) + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(torch.full((A,), math.log(0.3)) + zigzag)
        ramp = (torch.arange(H) / H).reshape(1, 1, H)
        self.time_mix_key = nn.Parameter(ramp ** r10)
        self.time_mix_value = nn.Parameter(ramp ** r10 + 0.3 * r01)
        self.time_mix_receptance = nn.Parameter(ramp ** (0.5 * r10))
        self.key, self.value, self.receptance = (nn.Linear(H, A, bias=False) for _ in range(3))
        self.output = nn.Linear(A, H, bias=False)

    def forward(self, x, last_x, wkv_state, wkv=wkv_parallel):  # x (B, T, H)
        sx = shift(x, last_x)
        k = self.key(mix(x, sx, self.time_mix_key))
        v = self.value(mix(x, sx, self.time_mix_value))
        r = torch.sigmoid(self.receptance(mix(x, sx, self.time_mix_receptance)))
        out, wkv_state = wkv(self.time_decay, self.time_first, k, v, wkv_state)
        return self.output(r * out), wkv_state


class FeedForward(nn.Module):
    def __init__(self, H, I, layer, L):
        super().__init__()
        ramp = (torch.arange(H) / H).reshape(1, 1, H)
        self.time_mix_key = nn.Parameter(ramp ** (1 - layer / L))
        self.time_mix_receptance = nn.Parameter(ramp ** (1 - layer / L))
        self.key = nn.Linear(H, I, bias=False)
        self.receptance = nn.Linear(H, H, bias=False)
        self.value = nn.Linear(I, H, bias=False)

    def forward(self, x, last_x):  # x (B, T, H)
        sx = shift(x, last_x)
        k = torch.square(torch.relu(self.key(mix(x, sx, self.time_mix_key))))
        return torch.sigmoid(self.receptance(mix(x, sx, self.time_mix_receptance))) * self.value(k)


class Block(nn.Module):
    def __init__(self, H, A, I, layer, L):
        super().__init__()
        if layer == 0:
            self.pre_ln = nn.LayerNorm(H)
        self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.attention = Attention(H, A, layer, L)
        self.feed_forward = FeedForward(H, I, layer, L)


class Core(nn.Module):
    def __init__(self, V, H, A, I, L):
        super().__init__()
        self.embeddings = nn.Embedding(V, H)
        self.blocks = nn.ModuleList(Block(H, A, I, i, L) for i in range(L))
        self.ln_out = nn.LayerNorm(H)


class TinyRwkv(nn.Module):
    """RwkvForCausalLM's parameters under HF's names; state = HF's [ffn_x, att_x, num, den, max]."""

    def __init__(self, config: dict):
        super().__init__()
        V, H, L = config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]
        A = config["attention_hidden_size"] or H
        I = config["intermediate_size"] or 4 * H
        self.rwkv = Core(V, H, A, I, L)
        self.head = nn.Linear(H, V, bias=False)
        self.H, self.A, self.L = H, A, L
        self._init_weights()

    def _init_weights(self):
        # RWKV-4: tiny embeddings (pre_ln rescales them), zero output/receptance/key projections,
        # orthogonal others with gain sqrt(out/in) when out > in, head gain 0.5 (·sqrt(V/H)).
        with torch.no_grad():
            nn.init.uniform_(self.rwkv.embeddings.weight, -1e-4, 1e-4)
            for name, p in self.named_parameters():
                if p.ndim != 2 or "embeddings" in name:
                    continue
                out, inp = p.shape
                gain = math.sqrt(out / inp) if out > inp else 1.0
                if name == "head.weight":
                    gain *= 0.5
                if any(s in name for s in ("attention.key", "attention.receptance",
                                           "attention.output", "feed_forward.value",
                                           "feed_forward.receptance")):
                    nn.init.zeros_(p)
                else:
                    nn.init.orthogonal_(p, gain=gain)

    def empty_state(self, B):
        z = torch.zeros(B, self.H, self.L)
        za = torch.zeros(B, self.A, self.L)
        return [z, z.clone(), za, za.clone(), torch.full((B, self.A, self.L), EMPTY_MAX)]

    def forward(self, ids, state=None, wkv=wkv_parallel):  # ids (B, T) -> logits (B, T, V)
        state = self.empty_state(ids.shape[0]) if state is None else state
        ffn_x, att_x, num, den, mx = ([] for _ in range(5))
        x = self.rwkv.embeddings(ids)
        for i, block in enumerate(self.rwkv.blocks):
            if i == 0:
                x = block.pre_ln(x)
            xa = block.ln1(x)
            a, (n, d, m) = block.attention(xa, state[1][..., i], (state[2][..., i],
                                           state[3][..., i], state[4][..., i]), wkv)
            x = x + a
            xf = block.ln2(x)
            x = x + block.feed_forward(xf, state[0][..., i])
            for lst, val in zip((ffn_x, att_x, num, den, mx), (xf[:, -1], xa[:, -1], n, d, m)):
                lst.append(val.detach())
        logits = self.head(self.rwkv.ln_out(x))
        return logits, [torch.stack(s, dim=-1) for s in (ffn_x, att_x, num, den, mx)]


# ----------------------------------------------------------------------------- data
def load_bytes(path: Path):
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


class Streams:
    """B read positions in the training bytes, each advancing by ctx per step with its state kept;
    a stream restarts at a random place with an empty state after a random number of windows."""

    def __init__(self, data, B, ctx, mean_windows, rng):
        self.data, self.ctx, self.rng, self.mean = data, ctx, rng, mean_windows
        self.pos = np.zeros(B, dtype=np.int64)
        self.left = np.zeros(B, dtype=np.int64)
        self.fresh = np.ones(B, dtype=bool)

    def next(self):
        """-> inputs, targets (B, ctx) int64, and which streams start over (B,) bool."""
        for b in np.flatnonzero(self.left == 0):
            self.left[b] = self.rng.geometric(1 / self.mean)
            self.pos[b] = self.rng.integers(0, len(self.data) - self.ctx * (self.left[b] + 1) - 1) \
                if len(self.data) > self.ctx * (self.left[b] + 2) else 0
            self.fresh[b] = True
        idx = self.pos[:, None] + np.arange(self.ctx + 1)[None, :]
        idx = np.minimum(idx, len(self.data) - 1)
        chunk = torch.from_numpy(self.data[idx].astype(np.int64))
        fresh = self.fresh.copy()
        self.pos += self.ctx
        self.left -= 1
        self.fresh[:] = False
        return chunk[:, :-1], chunk[:, 1:], torch.from_numpy(fresh)


@torch.no_grad()
def heldout_loss(model, data, ctx, streams=1, wkv=wkv_parallel):
    """Mean next-byte NLL (nats/char) over `data`, read in `streams` contiguous parts with state.
    streams=1 is what rwkv_np measures: byte 0 is context only, bytes 1..N-1 are predicted."""
    n = (len(data) - 1) // streams
    ids = torch.from_numpy(data[: n * streams + 1].astype(np.int64))
    inputs = torch.stack([ids[s * n:(s + 1) * n] for s in range(streams)])
    targets = torch.stack([ids[s * n + 1:(s + 1) * n + 1] for s in range(streams)])
    state, total = None, 0.0
    for t0 in range(0, n, ctx):
        logits, state = model(inputs[:, t0:t0 + ctx], state, wkv)
        total += F.cross_entropy(logits.flatten(0, 1), targets[:, t0:t0 + ctx].flatten(),
                                 reduction="sum").item()
    return total / (n * streams)


# ----------------------------------------------------------------------------- training
def lr_at(step, used, args):
    """Linear warm-up over --warmup steps, then cosine from --lr down to --lr-final as `used`
    (the fraction of the budget spent: of --steps or of --minutes, whichever is further) goes
    from 0 to 1. A machine fast enough to run all --steps within --minutes follows the step
    schedule exactly (reproducible); a slower one still anneals, by wall time."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * min(used, 1.0)))


def train(model, train_data, heldout, args):
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    rng = np.random.default_rng(args.seed)
    streams = Streams(train_data, args.batch, args.ctx, args.mean_windows, rng)
    probe = heldout[: args.eval_chars]
    state, start, step = None, time.monotonic(), 0
    bar = tqdm(range(args.steps), desc="train", unit="step", mininterval=30)
    for step in bar:
        inputs, targets, fresh = streams.next()
        if state is None:
            state = model.empty_state(args.batch)
        else:  # streams that jumped start from an empty state
            empty = model.empty_state(args.batch)
            state = [torch.where(fresh[:, None, None], e, s) for e, s in zip(empty, state)]
        minutes = (time.monotonic() - start) / 60
        used = max(step / args.steps, minutes / args.minutes)
        if used >= 1:
            tqdm.write(f"--minutes {args.minutes} used up after {step} of {args.steps} steps")
            break
        lr = lr_at(step, used, args)
        for group in opt.param_groups:
            group["lr"] = lr
        logits, state = model(inputs, state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            ho = heldout_loss(model, probe, args.ctx, streams=8)
            model.train()
            tqdm.write(f"step {step}  {minutes:5.1f} min  train {loss.item():.4f}  "
                       f"held-out (first {len(probe)} chars) {ho:.4f} nats/char")
    bar.close()
    return step, (time.monotonic() - start) / 60


# ----------------------------------------------------------------------------- export
def hf_config(args) -> dict:
    """HF config.json fields. context_length is only a limit of HF's CUDA kernel (the model was
    trained as an RNN with its state carried over); rescale_every 0: trained without halving."""
    return {"vocab_size": 256, "context_length": 1024, "hidden_size": args.hidden,
            "num_hidden_layers": args.layers, "attention_hidden_size": args.hidden,
            "intermediate_size": 4 * args.hidden, "layer_norm_epsilon": 1e-5,
            "bos_token_id": 0, "eos_token_id": 0, "rescale_every": 0,
            "tie_word_embeddings": False, "use_cache": True}


def save_model(directory: Path, config: dict, model, dtype: str) -> dict:
    """Write config.json + model.safetensors in `dtype` with rwkv_np's own writer; return the
    tensors as stored, widened to float32 (numpy), read back with rwkv_np's reader."""
    from rwkv_np.v4.config import RwkvConfig
    from rwkv_np.convert import save_pretrained
    from rwkv_np.load import read
    from rwkv_np.storage import as_float
    tensors = {n: p.detach().numpy().astype(np.float32) for n, p in model.state_dict().items()}
    save_pretrained(directory, RwkvConfig.from_dict(config), tensors, dtype=dtype)
    return {n: np.asarray(as_float(t, np.float32)) for n, t in read(directory)[2].items()}


def reference_logits(model, heldout, windows: int, length: int):
    """`windows` held-out windows of `length` bytes, evenly spaced -> ids (N, T), logits (N, T, V)
    by the token-by-token recurrence (HF's arithmetic), after checking the parallel form."""
    starts = np.linspace(0, len(heldout) - length - 1, windows).astype(np.int64)
    ids = torch.from_numpy(np.stack([heldout[s:s + length] for s in starts]).astype(np.int64))
    with torch.no_grad():
        slow, slow_state = model(ids, None, wkv_recurrent)
        fast, fast_state = model(ids, None, wkv_parallel)
    diff = (slow - fast).abs().max().item()
    sdiff = max(((a - b) / (1 + b.abs())).abs().max().item()
                for a, b in zip(slow_state[:4], fast_state[:4]))
    print(f"parallel vs recurrent WKV: max |Δlogit| {diff:.2e}, max rel Δstate {sdiff:.2e}")
    assert diff < 1e-3 and sdiff < 1e-3, "the parallel WKV form disagrees with the recurrence"
    return ids, slow


def check_against_transformers(directory: Path, ids, logits):
    try:
        from transformers import RwkvForCausalLM
    except ImportError:
        print("transformers not installed: HF cross-check skipped")
        return
    hf = RwkvForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf(ids[:1]).logits  # B=1: HF's CPU path
    print(f"transformers RwkvForCausalLM vs this tool: max |Δlogit| "
          f"{(hf_logits - logits[:1]).abs().max().item():.2e}")


def export(model, config, heldout, args):
    out = Path(args.out)
    rounded = save_model(out, config, model, args.dtype)
    model16 = TinyRwkv(config)
    model16.read({n: torch.from_numpy(t)[2] for n, t in rounded.items()})
    model16.eval()
    ids, logits = reference_logits(model16, heldout, args.ref_windows, args.ref_length)
    import safetensors.numpy
    Path(args.fixture).parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(
        {"input_ids": ids.numpy(), "logits": logits.numpy().astype(np.float32)}, args.fixture,
        metadata={"source": "tools/train_tiny.py: torch float32, token-by-token WKV, from the "
                            f"{args.dtype} weights in {out.name}, empty state per window"})
    check_against_transformers(out, ids, logits)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.2f} MiB) and {args.fixture}")
    probe = heldout[: args.eval_chars]
    print(f"held-out first {len(probe)} chars, 8 streams: float32 "
          f"{heldout_loss(model, probe, args.ctx, streams=8):.4f}, {args.dtype} "
          f"{heldout_loss(model16, probe, args.ctx, streams=8):.4f} nats/char")
    nll = rwkv_np_loss(out, heldout)
    print(f"held-out, all {len(heldout)} chars in one stream, measured by rwkv_np: "
          f"{nll:.4f} nats/char = {nll / math.log(2):.4f} bits/char")


def rwkv_np_loss(directory: Path, data, chunk: int = 256) -> float:
    """Mean next-byte NLL of `data` (uint8) by rwkv_np's float32 engine on the exported model,
    fed in chunks with the state carried (what `rwkv-np score` does): byte 0 is not scored."""
    from rwkv_np import RwkvForCausalLM
    lm = RwkvForCausalLM.from_pretrained(directory)
    ids, state, total = data.astype(np.int64), None, 0.0
    for t0 in range(0, len(ids) - 1, chunk):
        targets = ids[t0 + 1:t0 + 1 + chunk]
        out = lm(ids[t0:t0 + len(targets)], state=state, use_cache=True)
        state = out.state
        z = torch.from_numpy(out.logits[0].astype(np.float64))
        total += F.cross_entropy(z, torch.from_numpy(targets), reduction="sum").item()
    return total / (len(ids) - 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--out", default=str(REPO / "rwkv_np" / "assets" / "tiny-shakespeare"))
    p.add_argument("--fixture", default=str(REPO / "tests" / "fixtures" / "demo_reference.safetensors"))
    p.add_argument("--checkpoint", default=str(REPO / "build" / "train_tiny.pt"),
                   help="float32 weights saved after training (for --export-only)")
    p.add_argument("--export-only", action="store_true", help="skip training, export --checkpoint")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ctx", type=int, default=64, help="training window (bytes); the state carries on")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=2000, help="training budget in optimizer steps")
    p.add_argument("--minutes", type=float, default=33.0,
                   help="training budget in wall time; the run ends at whichever budget comes first")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-final", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--mean-windows", type=float, default=8.0,
                   help="mean number of consecutive windows a stream reads before it jumps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-chars", type=int, default=16384, help="held-out prefix for progress")
    p.add_argument("--ref-windows", type=int, default=3)
    p.add_argument("--ref-length", type=int, default=64)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (more than the free cores slows torch down badly)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    path = Path(args.data)
    if not path.is_file():
        raise SystemExit(f"--data {path}: not found")
    train_data, heldout = load_bytes(path)
    config = hf_config(args)
    model = TinyRwkv(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{path.name}: {len(train_data)} train / {len(heldout)} held-out bytes; "
          f"L={args.layers} H={args.hidden}: {n_params:,} parameters")
    if args.export_only:
        model.read(torch.load(args.checkpoint)[2])
    else:
        steps, minutes = train(model, train_data, heldout, args)
        print(f"trained {steps} steps × {args.batch}×{args.ctx} bytes in {minutes:.1f} min")
        Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.checkpoint)
    model.eval()
    export(model, config, heldout, args)


if __name__ == "__main__":
    main()
