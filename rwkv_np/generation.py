"""Text generation for RwkvForCausalLM: prefill, decode one token, decode many, stream text.

An RNN needs no KV cache: the prompt is run once to build the state (prefill, in chunks of
`prefill_chunk_size` tokens carried by the state, so a 100k-token prompt costs bounded memory),
then each step feeds one token per row and gets the next logits and state back.

    prefill(model, ids, state)        -> logits (B, V) of the last prompt token, state
    decode_one(model, tokens, state)  -> logits (B, V), state
    choose_tokens(scores, ...)        -> (B,) next tokens (greedy or sampled, sampling.py)
    generate_tokens(model, ids, ...)  a generator: yields (rows, tokens) every step and returns
                                      a GenerateOutput
    generate(model, ids, ...)         HF's `generate`: the sequences, or a GenerateOutput
    TextStream(model, tok, prompt)    iterates over text pieces, never half a UTF-8 character

Argument names are HF's (max_new_tokens, do_sample, temperature, top_k, top_p,
repetition_penalty, suppress_tokens, eos_token_id, pad_token_id, stop_strings, tokenizer,
stopping_criteria, attention_mask), plus ChatRWKV's presence/frequency penalties with decay,
`stop_sequences` (token lists), `seed`, `state` and `prefill_chunk_size`.

Rows stop independently (eos, a stop sequence or string, a stopping criterion, or
max_new_tokens). The returned state of a row covers every token of its returned sequence, the
token that stopped it included, so the next call continues the text exactly where it ended.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from . import sampling
from .sampling import Penalties, greedy, logits_to_probs, sample
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_PREFILL_CHUNK_SIZE = 256  # tokens per model call while prefilling: ~(chunk x 4H) floats live


@dataclass
class GenerateOutput:
    sequences: np.ndarray          # (B, P + N) int64: prompts (left-padded) + generated, pad after a stop
    state: list                    # model.state_names' arrays, batch first: each row after every token
    new_tokens: list               # B lists of generated ids
    stop_reasons: list             # per row: eos | stop_sequence | stop_string | stopping_criteria | length


def prefill(model, input_ids, state=None, chunk_size: int = DEFAULT_PREFILL_CHUNK_SIZE):
    """Run (B, T) prompt ids through the model in chunks; -> logits (B, V) of the last token, state."""
    input_ids = np.asarray(input_ids)
    for start in range(0, input_ids.shape[1], chunk_size):
        out = model(input_ids[:, start:start + chunk_size], state=state, use_cache=True, logits_to_keep=1)
        state = out.state
    return out.logits[:, -1], state


def decode_one(model, tokens, state):  # tokens (B,) -> logits (B, V), state
    out = model(np.asarray(tokens, dtype=np.int64)[:, None], state=state, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.state


def choose_tokens(scores, do_sample: bool, temperature: float, top_k, top_p, rngs) -> np.ndarray:
    """(B, V) processed scores -> (B,) tokens: argmax, or a draw from the filtered softmax."""
    if not do_sample:
        return greedy(scores)
    return sample(logits_to_probs(scores, temperature, top_k, top_p), rngs)


def _prompt_rows(input_ids, attention_mask) -> list[np.ndarray]:
    """The prompt of each row without padding, from a (T,) / (B, T) array (+ mask) or id lists."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(r, (list, tuple, np.ndarray)) for r in input_ids):
        rows = [np.asarray(r) for r in input_ids]        # ragged lists of ids
    else:
        ids = np.asarray(input_ids)
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2:
            raise InputError(f"input_ids: expected (B, T) or (T,) token ids, got shape {ids.shape}")
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            mask = mask[None] if mask.ndim == 1 else mask
            if mask.shape != ids.shape:
                raise InputError(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
            rows = [row[m != 0] for row, m in zip(ids, mask)]
        else:
            rows = list(ids)
    for b, row in enumerate(rows):
        if row.ndim != 1 or row.size == 0 or not np.issubdtype(row.dtype, np.integer):
            raise InputError(f"input_ids: row {b} must be a non-empty sequence of integer token ids")
    return [row.astype(np.int64) for row in rows]


def _rngs(seed, rows: int) -> list:
    """One numpy Generator per row: from an int (shared), a Generator (shared) or a per-row list."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise InputError(f"seed: a per-row list needs {rows} entries, got {len(seed)}")
        return [s if isinstance(s, np.random.Generator) else np.random.default_rng(s) for s in seed]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return [rng] * rows


def _id_set(value, name: str) -> set:
    ids = [value] if isinstance(value, (int, np.integer)) else list(value or [])
    if not all(isinstance(i, (int, np.integer)) for i in ids):
        raise InputError(f"{name}: expected a token id or a list of token ids, got {value!r}")
    return {int(i) for i in ids}


def _check(max_new_tokens, do_sample, temperature, top_k, top_p, prefill_chunk_size):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise InputError(f"temperature: must be > 0 when sampling, got {temperature!r} (use do_sample=False for greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InputError(f"top_k: expected an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise InputError(f"top_p: expected a number in (0, 1] or None, got {top_p!r}")
    if not isinstance(prefill_chunk_size, (int, np.integer)) or prefill_chunk_size < 1:
        raise InputError(f"prefill_chunk_size: expected an integer >= 1, got {prefill_chunk_size!r}")


def generate_tokens(model, input_ids, max_new_tokens: int = 20, *, attention_mask=None, state=None,
                    do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, repetition_penalty: float = 1.0,
                    presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                    penalty_decay: float = 0.996, suppress_tokens=None, eos_token_id=None,
                    pad_token_id: int | None = None, stop_sequences=None, stop_strings=None,
                    tokenizer: Tokenizer | None = None, stopping_criteria=None, seed=None,
                    prefill_chunk_size: int = DEFAULT_PREFILL_CHUNK_SIZE):
    """Decode up to max_new_tokens per row, yielding `(rows, tokens)` after each step: the (n,)
    indices of the rows still running and their (n,) new tokens. Returns a GenerateOutput
    (read it from StopIteration.value, or call `generate`). Arguments: see `generate`."""
    _check(max_new_tokens, do_sample, temperature, top_k, top_p, prefill_chunk_size)
    prompts = _prompt_rows(input_ids, attention_mask)
    B, V = len(prompts), model.config.vocab_size
    eos = _id_set(model.config.eos_token_id if eos_token_id is None else eos_token_id, "eos_token_id")
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    banned = sorted(_id_set(suppress_tokens, "suppress_tokens"))
    if banned and not 0 <= banned[0] <= banned[-1] < V:
        raise InputError(f"suppress_tokens: token id {banned[0] if banned[0] < 0 else banned[-1]} is outside "
                         f"the vocabulary [0, {V})")
    stop_seqs = [list(map(int, s)) for s in (stop_sequences or []) if len(s) > 0]
    stop_bytes = [s.encode("utf-8") for s in ([stop_strings] if isinstance(stop_strings, str) else stop_strings or [])]
    if any(not s for s in stop_bytes):
        raise InputError("stop_strings: an empty string would stop before the first token")
    if stop_bytes and tokenizer is None:
        raise InputError("stop_strings: pass tokenizer=... too, to turn tokens into text")
    criteria = [stopping_criteria] if callable(stopping_criteria) else list(stopping_criteria or [])
    rngs = _rngs(seed, B)
    penalties = Penalties(repetition_penalty, presence_penalty, frequency_penalty, penalty_decay)
    penalties.start(prompts, V)

    # Prefill: one batched pass when the rows are equally long, else row by row (no padding
    # ever reaches the model), then stack the rows' logits and states.
    if state is not None and (not isinstance(state, (list, tuple))
                              or any(np.shape(s)[:1] != (B,) for s in state)):
        raise InputError(f"state: expected a list of arrays with a leading batch dimension of {B}")
    if len({len(p) for p in prompts}) == 1:
        logits, state = prefill(model, np.stack(prompts), state, prefill_chunk_size)
    else:
        parts = [prefill(model, p[None], None if state is None else [s[b:b + 1] for s in state],
                         prefill_chunk_size) for b, p in enumerate(prompts)]
        logits = np.concatenate([lg for lg, _ in parts])
        state = [np.concatenate([st[k] for _, st in parts]) for k in range(len(parts[0][1]))]
    final_state = [np.array(s) for s in state]

    P = max(len(p) for p in prompts)
    sequences = np.full((B, P + max_new_tokens), pad, dtype=np.int64)   # (B, P + N)
    for b, p in enumerate(prompts):
        sequences[b, P - len(p):P] = p
    new_tokens = [[] for _ in range(B)]
    reasons = ["length"] * B
    tails = [b""] * B                        # each row's last generated bytes, for stop_strings
    keep_bytes = max((len(s) for s in stop_bytes), default=1) - 1
    active = np.arange(B)                    # rows still generating; logits/state hold only these
    for step in range(max_new_tokens):
        scores = sampling.suppress_tokens(penalties.apply(np.asarray(logits, dtype=np.float64)), banned)
        if np.isneginf(scores).all(axis=-1).any():
            raise InputError("suppress_tokens: every token of the vocabulary is banned")
        tokens = choose_tokens(scores, do_sample, temperature, top_k, top_p, [rngs[b] for b in active])
        penalties.update(tokens)
        sequences[active, P + step] = tokens
        done = np.zeros(len(active), dtype=bool)
        for j, (b, t) in enumerate(zip(active, tokens)):
            new_tokens[b].append(int(t))
            window = tails[b] + tokenizer.token_bytes(int(t)) if stop_bytes else b""
            if int(t) in eos:
                reasons[b] = "eos"
            elif any(new_tokens[b][-len(s):] == s for s in stop_seqs):
                reasons[b] = "stop_sequence"
            elif any(s in window for s in stop_bytes):
                reasons[b] = "stop_string"
            else:
                tails[b] = window[-keep_bytes:] if keep_bytes else b""
                continue
            done[j] = True
        if criteria:
            full_scores = np.zeros((B, V))
            full_scores[active] = scores
            for criterion in criteria:  # HF protocol: (input_ids, scores) -> bool or (B,) bools
                verdict = np.broadcast_to(np.asarray(criterion(sequences[:, :P + step + 1], full_scores),
                                                     dtype=bool).reshape(-1), (B,))[active]
                for j in np.flatnonzero(verdict & ~done):
                    reasons[active[j]] = "stopping_criteria"
                done |= verdict
        if step == max_new_tokens - 1:
            done[:] = True
        yield active, tokens
        # Feed the new tokens (also those of rows that just stopped, so that their state covers
        # them), park the states of finished rows and drop those rows from the batch.
        logits, state = decode_one(model, tokens, state)
        for k in range(len(state)):
            final_state[k][active[done]] = state[k][done]
        keep = ~done
        active, logits, state = active[keep], logits[keep], [s[keep] for s in state]
        penalties.keep(keep)
        if len(active) == 0:
            break
    width = P + max((len(t) for t in new_tokens), default=0)
    return GenerateOutput(sequences[:, :width], final_state, new_tokens, reasons)


def generate(model, input_ids, max_new_tokens: int = 20, *, return_dict_in_generate: bool = False, **kwargs):
    """HF-style generate. input_ids: (B, T) or (T,) ids (with attention_mask to drop left padding)
    or ragged lists of ids. Returns the (B, P + N) sequences, or with return_dict_in_generate a
    GenerateOutput that also holds the final state, each row's new tokens and why it stopped.

    Keyword arguments (defaults in brackets):
      do_sample [False]: greedy argmax when False, else a draw with temperature [1.0],
          top_k [None = off] and top_p [None = off] (HF defaults top_k to 50; rwkv_np does not).
      repetition_penalty [1.0] (HF), presence_penalty / frequency_penalty [0.0] with
          penalty_decay [0.996] (ChatRWKV), suppress_tokens [None]: banned ids.
      eos_token_id [None = config's; [] disables], pad_token_id [eos], stop_sequences: token-id
          lists, stop_strings: str or strs matched on the generated text (tokenizer= required),
          stopping_criteria: callables (input_ids (B, T), scores (B, V)) -> bool or (B,) bools.
      seed: int, numpy Generator, or one of those per row (row b then equals a batch-of-one
          run with seed[b]); state: the model's state arrays to start from [None = empty];
          prefill_chunk_size [256].
    """
    gen = generate_tokens(model, input_ids, max_new_tokens, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            out = stop.value
            break
    return out if return_dict_in_generate else out.sequences


class TextStream:
    """Generate from a text prompt (one row) and iterate over the new text as it is produced.

        stream = TextStream(model, tokenizer, "Once upon a time", max_new_tokens=50, stop_strings=["\\n\\n"])
        for piece in stream: print(piece, end="", flush=True)
        stream.output.state   # for the next turn; stream.text is the whole new text

    Pieces never split a UTF-8 character. Text is cut just before the first stop string (the
    tokens and the state still include the token that completed it); text that could be the
    start of a stop string is held back until that is decided.
    """

    def __init__(self, model, tokenizer: Tokenizer, prompt: str | list, **kwargs):
        self.model, self.tokenizer, self.kwargs = model, tokenizer, kwargs
        self.prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        stops = kwargs.get("stop_strings") or []
        self.stops = [stops] if isinstance(stops, str) else list(stops)
        self.output: GenerateOutput | None = None
        self.text = ""

    def _release(self, pending: str, final: bool) -> tuple[str, str, bool]:
        """-> (text safe to emit, text held back, stop string found)."""
        hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            return pending[:min(hits)], "", True
        if final:
            return pending, "", False
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(pending)), 0, -1)
                    if pending.endswith(s[:n])), default=0)
        return pending[:len(pending) - hold], pending[len(pending) - hold:], False

    def __iter__(self):
        decoder = StreamDecoder(self.tokenizer)
        gen = generate_tokens(self.model, [self.prompt_ids], tokenizer=self.tokenizer, **self.kwargs)
        pending, stopped = "", False
        while True:
            try:
                _, tokens = next(gen)
            except StopIteration as stop:
                self.output = stop.value
                break
            if stopped:
                continue
            piece, pending, stopped = self._release(pending + decoder.push(tokens), final=False)
            if piece:
                self.text += piece
                yield piece
        if not stopped:
            piece, _, _ = self._release(pending + decoder.flush(), final=True)
            if piece:
                self.text += piece
                yield piece
