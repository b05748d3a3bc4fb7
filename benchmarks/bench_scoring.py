"""Scoring throughput of poft against the forward-pass bound, a competent scorer and the official approach.

    python benchmarks/bench_scoring.py                          # real SmolLM2-135M-Instruct, 48 real rows, CPU
    python benchmarks/bench_scoring.py --preset vocab128k       # random-init Llama, 128k vocabulary
    python benchmarks/bench_scoring.py --budgets 512,2048,8192  # poft's packed budget, side by side
    python benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --preset llama-1b --rows 512   # a GPU

Same rows (real Alpaca rows, data/alpaca_real.json, under the model's own chat template), same
tokens, same process; every scorer turns them into per-row mean response log-probs:
  bound       the unpadded plain forward: `model(input_ids=row)` one row at a time (no padding, no
              log-softmax); what any scorer pays at least for the decoder, plus the full LM head
  poft        `logprobs.packed_logprob_sums` over `logprobs.packed_batches` (what `poft score` runs per
              batch): rows packed into one row, attention per sequence, LM head on response positions only
  competent   a competent 20-line scorer: rows sorted by length, batches of --competent-batch, right
              padding + attention mask, full logits, log_softmax + gather
  official    the official code's approach (re-implemented, no code copied): every row padded to
              --official-pad (4096 in the official code), batches of 12, full logits, per-row log_softmax
              and .item(); run once (not interleaved) as it is far slower
Timing: rounds of bound, poft, competent (interleaved, so load on a shared machine hits all alike), median
per scorer; the ratios are of medians. `uptime` is printed at the start and the end. The last line is one JSON
object; `max_abs_mean_logp_diff` compares every scorer with poft (must be <= 1e-4 in fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from poft.chat import ChatFormat  # noqa: E402
from poft.logprobs import default_batch_tokens, packed_batches, packed_logprob_sums  # noqa: E402

REAL = Path("~/.cache/poft/real-models/hf/smollm2-135m-instruct").expanduser()
ROWS = Path(__file__).resolve().parent.parent / "data/alpaca_real.json"
PRESETS = {
    "vocab128k": dict(vocab_size=128256, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip
OFFICIAL_BATCH = 12


def load(args) -> tuple[torch.nn.Module, ChatFormat]:
    """The real checkpoint (--preset real), or a random-init config with the real (or a tiny) tokenizer."""
    dtype = getattr(torch, args.dtype)
    if REAL.exists():
        tokenizer = AutoTokenizer.from_pretrained(REAL)
    else:  # a machine without the real-model cache (a GPU box): a tiny byte-level tokenizer
        from poft.tiny import build_tokenizer

        tokenizer = build_tokenizer("chatml")
    if args.preset == "real":
        model = AutoModelForCausalLM.from_pretrained(REAL, dtype=dtype)
    else:
        cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=8192, tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.to(args.device).eval(), ChatFormat.from_tokenizer(tokenizer, "bench")


def encode(chat: ChatFormat, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = []
    for r in json.loads(ROWS.read_text()):
        user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        e = chat.encode(messages, None)
        rows.append((np.asarray(e.input_ids, np.int64), np.asarray(e.response_mask, np.uint8)))
    while len(rows) < n:  # more rows than the file holds (a GPU run): repeat it
        rows += rows[: n - len(rows)]
    return rows[:n]


def means(sums, counts) -> np.ndarray:
    return np.asarray(sums, np.float64) / np.maximum(np.asarray(counts), 1)


def bound(model, rows) -> None:
    for ids, _ in rows:
        model(input_ids=torch.from_numpy(ids)[None].to(model.device), use_cache=False)


def poft(model, rows, budget: int) -> np.ndarray:
    chunk = max(1, (1 << 26) // model.get_output_embeddings().weight.shape[0])
    out = np.zeros(len(rows))
    for batch in packed_batches([len(ids) for ids, _ in rows], budget):
        sums, counts = packed_logprob_sums(model, [rows[i] for i in batch], chunk_size=chunk)
        out[batch] = means(sums, counts)
    return out


def padded(model, rows, pad_to: int | None):
    """(input_ids, attention_mask, response) right-padded to the longest row, or to `pad_to`."""
    length = pad_to or max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention, response = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for b, (row, mask) in enumerate(rows):
        ids[b, : len(row)], attention[b, : len(row)] = torch.from_numpy(row), 1
        response[b, : len(row)] = torch.from_numpy(mask.astype(bool))
    return ids.to(model.device), attention.to(model.device), response.to(model.device)


def competent(model, rows, batch_size: int) -> np.ndarray:
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = np.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, attention, response = padded(model, [rows[i] for i in batch], None)
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        mask = response[:, 1:]
        out[batch] = means((picked * mask).sum(-1).double().cpu(), mask.sum(-1).cpu())
    return out


def official(model, rows, pad_to: int) -> np.ndarray:
    scores = []
    for start in range(0, len(rows), OFFICIAL_BATCH):
        ids, attention, response = padded(model, rows[start : start + OFFICIAL_BATCH], pad_to)
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits.float()
        for b in range(len(ids)):
            log_probs = torch.log_softmax(logits[b, :-1], dim=-1)
            picked = log_probs.gather(-1, ids[b, 1:, None]).squeeze(-1)
            mask = response[b, 1:]
            scores.append((picked[mask].sum() / mask.sum()).item())
    return np.asarray(scores)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="real", choices=["real", *PRESETS])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)"
    )
    parser.add_argument(
        "--budgets", default=None, help="poft packed budgets to compare (default: the library's)"
    )
    parser.add_argument("--competent-batch", type=int, default=8)
    parser.add_argument(
        "--official-pad", type=int, default=None, help="4096 on GPU; 512 on CPU (see BENCHMARKS.md)"
    )
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM 989, H200 989)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print("load at start:", uptime(), flush=True)
    model, chat = load(args)
    rows = encode(chat, args.rows)
    dtype = getattr(torch, args.dtype)
    budgets = (
        [int(b) for b in args.budgets.split(",")] if args.budgets else [default_batch_tokens(device, dtype)]
    )
    official_pad = args.official_pad or (4096 if device.type == "cuda" else 512)
    scorers = {
        "bound": lambda: bound(model, rows),
        "competent": lambda: competent(model, rows, args.competent_batch),
    }
    scorers |= {f"poft@{b}": (lambda b=b: poft(model, rows, b)) for b in budgets}
    times: dict[str, list[float]] = {name: [] for name in scorers}
    scores = {}
    with torch.inference_mode():
        for name, run in scorers.items():  # warm-up, and the scores
            scores[name] = run()
        for _ in range(args.rounds):
            for name, run in scorers.items():
                sync()
                start = time.perf_counter()
                run()
                sync()
                times[name].append(time.perf_counter() - start)
        if not args.no_official:
            start = time.perf_counter()
            scores["official"] = official(model, rows, official_pad)
            sync()
            times["official"] = [time.perf_counter() - start]
    tokens = sum(len(ids) for ids, _ in rows)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = min(budgets, key=lambda b: median[f"poft@{b}"])
    ours = f"poft@{budgets[0]}"  # the library's default unless --budgets is given
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "preset": args.preset, "parameters": n_params, "device": args.device, "dtype": args.dtype,
        "threads": args.threads, "rows": len(rows), "tokens": tokens,
        "length_min_median_max": [int(f(np.array([len(i) for i, _ in rows]))) for f in (np.min, np.median, np.max)],
        "tokens_per_s": {name: round(tokens / m, 1) for name, m in median.items()},
        "poft": ours, "best_budget": best,
        "poft_vs_bound": round(median["bound"] / median[ours], 3),
        "poft_vs_competent": round(median["competent"] / median[ours], 3),
        "poft_vs_official": round(median["official"] / median[ours], 2) if "official" in median else None,
        "official_pad": None if args.no_official else official_pad,
        "max_abs_mean_logp_diff": {
            name: float(np.max(np.abs(s - scores[ours]))) for name, s in scores.items() if s is not None
        },
        "share_of_peak": round(2 * n_params * tokens / median[ours] / (args.peak_tflops * 1e12), 4)
        if device.type == "cuda" else None,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "not measured on GPU",
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }  # fmt: skip
    print("load at end:", uptime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
