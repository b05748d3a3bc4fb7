"""Scoring throughput of `poft score` against the official PoFT scoring approach, same model, same data.

    python benchmarks/bench_scoring.py --quick                 # ~1 minute on CPU
    python benchmarks/bench_scoring.py                         # more examples
    python benchmarks/bench_scoring.py --preset llama-1b --device cuda --dtype bfloat16   # on a GPU

One random-init Llama-architecture model (no download) and one dataset of chat conversations whose
lengths follow a log-normal spread between 16 and --max-length tokens. Two scorers:
  ours      `score_dataset(...)`, end to end: validation, tokenisation, length-sorted token-budget
            batches, LM head on response positions only (chunked), shards, merge, save_to_disk.
  official  the official code's approach, re-implemented here (no code copied): every example padded to
            max length, fixed batch of 12, full [batch x length x vocab] logits, log_softmax, then a
            per-example loop that reduces each example with `.item()`.
Both use the same tokenisation (`ChatFormat.encode`) and the same response tokens, so their per-example
scores (mean response log-prob) must agree; the script checks it. Tokens/s counts real (unpadded) tokens
over wall time, tokenisation included for both. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from poft.chat import ChatFormat  # noqa: E402
from poft.scoring import score_dataset  # noqa: E402
from poft.tiny import DEFAULT_CORPUS, build_tokenizer  # noqa: E402

PRESETS = {
    "cpu-small": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip
OFFICIAL_BATCH = 12
WORDS = DEFAULT_CORPUS.replace("\n", " ").split()


def make_conversations(n: int, max_length: int, tokens_per_word: float, seed: int = 0) -> list[dict]:
    """Conversations with log-normal total lengths in [16, max_length] tokens (median ~150)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        total = min(max_length, max(16, int(rng.lognormvariate(math.log(150), 0.9))))
        words = max(2, int(total / tokens_per_word) - 8)
        n_user = max(1, int(words * rng.uniform(0.2, 0.6)))
        user = " ".join(rng.choice(WORDS) for _ in range(n_user))
        answer = " ".join(rng.choice(WORDS) for _ in range(max(1, words - n_user)))
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"b{i}", "messages": messages})
    return rows


def official_scores(model, encoded: list, max_length: int, pad_id: int) -> list[float]:
    """Pad every example to max_length, fixed batches, full logits, per-example .item() loop."""
    scores = []
    for start in range(0, len(encoded), OFFICIAL_BATCH):
        batch = encoded[start : start + OFFICIAL_BATCH]
        ids = torch.full((len(batch), max_length), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        masks = torch.zeros_like(ids)
        for b, e in enumerate(batch):
            ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention[b, : len(e.input_ids)] = 1
            masks[b, : len(e.input_ids)] = torch.tensor(e.response_mask)
        ids, attention, masks = ids.to(model.device), attention.to(model.device), masks.to(model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()  # [B, max_length, V]
        for b in range(len(batch)):
            log_probs = torch.log_softmax(logits[b, :-1], dim=-1)
            token_log_probs = log_probs.gather(-1, ids[b, 1:, None]).squeeze(-1)
            mask = masks[b, 1:].bool()
            scores.append((token_log_probs[mask].sum() / mask.sum()).item())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute on CPU")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=2048, help="ours: padded tokens per batch")
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="card's dense bf16 peak (H100 SXM: 989)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_examples = args.examples or (36 if args.quick else 240)

    tokenizer = build_tokenizer("chatml", [DEFAULT_CORPUS * 4], vocab_size=1024)
    chat = ChatFormat.from_tokenizer(tokenizer, "bench")
    per_word = len(tokenizer(DEFAULT_CORPUS).input_ids) / len(WORDS)
    rows = make_conversations(n_examples, args.max_length, per_word)
    cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(4096, args.max_length),
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = LlamaForCausalLM(cfg).to(dtype=dtype).eval()
    workdir = tempfile.mkdtemp(prefix="bench_scoring_")
    model.save_pretrained(f"{workdir}/model")
    tokenizer.save_pretrained(f"{workdir}/model")
    model = model.to(args.device)

    started = time.perf_counter()
    scored = score_dataset(Dataset.from_list(rows), [f"{workdir}/model"], f"{workdir}/out",
                           max_length=args.max_length, batch_tokens=args.batch_tokens, dtype=args.dtype,
                           progress=False)  # fmt: skip
    ours_seconds = time.perf_counter() - started

    started = time.perf_counter()
    encoded = [chat.encode(r["messages"], args.max_length) for r in rows]
    official = official_scores(model, encoded, args.max_length, tokenizer.pad_token_id)
    official_seconds = time.perf_counter() - started

    lengths = np.array([len(e.input_ids) for e in encoded])
    tokens = int(lengths.sum())
    ours = np.array(scored["model_logp_sum"]) / np.array(scored["model_n_tokens"])
    max_abs_diff = float(np.max(np.abs(ours - np.array(official))))
    tolerance = 1e-4 if args.dtype == "float32" else 5e-2
    n_params = sum(p.numel() for p in model.parameters())
    ours_tps, official_tps = tokens / ours_seconds, tokens / official_seconds
    result = {
        "examples": n_examples,
        "tokens": tokens,
        "length_min_median_max": [int(lengths.min()), int(np.median(lengths)), int(lengths.max())],
        "max_length": args.max_length,
        "preset": args.preset,
        "parameters": n_params,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "ours_seconds": round(ours_seconds, 2),
        "official_seconds": round(official_seconds, 2),
        "ours_tokens_per_s": round(ours_tps, 1),
        "official_tokens_per_s": round(official_tps, 1),
        "speedup_vs_official": round(ours_tps / official_tps, 2),
        "max_abs_score_diff": max_abs_diff,
        "scores_agree": max_abs_diff <= tolerance,
        "ours_share_of_peak": round(2 * n_params * ours_tps / (args.peak_tflops * 1e12), 4)
        if args.device.startswith("cuda")
        else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    if not result["scores_agree"]:
        print(f"bench_scoring: scores disagree (max abs diff {max_abs_diff:.2e} > {tolerance})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
