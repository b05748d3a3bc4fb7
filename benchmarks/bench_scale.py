"""Time and memory of `poft score`, `poft filter` and `poft inspect` against the number of rows.

    python benchmarks/bench_scale.py                       # 10k, 100k and 1M rows (CPU)
    python benchmarks/bench_scale.py --rows 10000 100000   # the sizes to run

Rows: N synthetic SFT conversations (messages JSONL, seeded: the first k rows are the same for every N;
a system turn in some, a second exchange in some, 20-400 characters a message), streamed to
--workdir/rows-N.jsonl (reused when present). Model: one tiny aligned model built from a config
(`poft.tiny`: chatml tokenizer of 512 tokens trained on the same generator's text, Llama hidden 64, 2
layers), saved to --workdir/tiny. For each N, each command runs in a fresh process, one after another:
    poft score --dataset ROWS --model tiny=MODEL --output SCORED --dtype float32 --no-progress
    poft filter SCORED --keep-top 0.5 --output FILTERED
    poft inspect SCORED --output INSPECTED
Per N and command it prints:
  wall s       the command's wall-clock seconds (start of the process to its exit)
  cpu s        its user + system CPU seconds (`os.wait4` rusage of that child)
  s/1k rows    wall seconds per 1,000 rows
  peak RSS MB  the child's peak resident memory, sampled every 20 ms from /proc/PID/status once it runs the
               command (`ru_maxrss` would also count the pages of this process that the child holds between
               fork and exec: it gave ~520 MB for every `poft filter`, the size of this process), split into
  private / file-backed  the peaks of RssAnon + RssShmem (what the command allocated) and of RssFile (pages of
               memory-mapped files: the Arrow datasets read or written, which the kernel drops when memory is
               short; they grow with the rows a command reads and say nothing about what it keeps)
  load         the 1-minute load average just before and just after the command
For score, also:
  tokens       the tokens scored (manifest `throughput.tokens_this_run`)
  forward s    the model's forward over those tokens, measured here in this (the parent) process: poft's own
               per-batch forward (`logprobs.packed_logprob_sums` over `packed_batches`: decoder, LM head
               on response positions) on the first --forward-sample rows of the same file, same budget, same
               threads, fp32, median of 3, as seconds per token, times the run's tokens; the manifest does
               not separate forward time from encoding (its `scoring_seconds` are tokenise + forward)
  forward %    forward s / score wall s
Then, against the smallest N (10k by default): the peak-RSS difference in MB, the time-per-row ratio, and
the issue-20 targets (set for 1M rows against 10k; judged here at every N): score's peak RSS within 300 MB
of the 10k run, time per row within 1.2x of the 10k run, and the forward at least half of score's time;
each marked met / NOT met. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the commands run as a user runs them: with the tokenizer's threads (this process turns them off for itself,
# since it forks the commands after training a tokenizer)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from poft.chat import ChatFormat  # noqa: E402
from poft.logprobs import (  # noqa: E402
    batch_budget,
    default_batch_tokens,
    packed_batches,
    packed_logprob_sums,
    scoring_chunk_size,
)
from poft.tiny import build_model, build_tokenizer  # noqa: E402

POFT = Path(sys.executable).with_name("poft")
RSS_TARGET_MB, TIME_TARGET, FORWARD_TARGET = 300.0, 1.2, 0.5
# fmt: off
SUBJECTS = ["the capital of France", "a list of numbers", "photosynthesis", "the French Revolution",
            "a Python function", "binary search", "the water cycle", "a cover letter", "compound interest",
            "the moon landing", "a haiku about autumn", "sorting algorithms", "healthy breakfast ideas",
            "the causes of inflation", "a SQL query", "the rules of chess", "climate change", "a short story"]
ASKS = ["Explain {s} in simple terms.", "Write a short paragraph about {s}.", "What should I know about {s}?",
        "Give me three facts about {s}.", "Can you summarise {s} for a beginner?", "How would you describe {s}?"]
WORDS = ("the a of and to in is it that for on with as was by this are be from or an which can one all "
         "first also time people way year day thing world life hand part place case point number group "
         "problem fact example answer question result reason idea water energy system order process "
         "simple important different small large early often usually because however therefore").split()
SYSTEMS = ["You are a helpful assistant.", "Answer briefly and accurately.", "You are a patient teacher."]
# fmt: on


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def reply(rng: random.Random) -> str:
    return " ".join(sentence(rng, 4, 14) for _ in range(rng.randint(1, 5)))


def conversation(rng: random.Random) -> list[dict]:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
    for turn in range(1 if rng.random() < 0.8 else 2):
        ask = rng.choice(ASKS).format(s=rng.choice(SUBJECTS)) if turn == 0 else sentence(rng, 3, 10)
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": reply(rng)}]
    return messages


def write_rows(path: Path, n: int, seed: int) -> None:
    """N rows streamed to `path` (one line at a time; nothing held in memory)."""
    if path.exists():
        return
    rng = random.Random(seed)
    partial = path.with_suffix(".partial")
    with partial.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"row-{i}", "messages": conversation(rng)}) + "\n")
    partial.rename(path)


def build_tiny(folder: Path, seed: int):
    """The tiny aligned model and its tokenizer (built once, saved for the child processes)."""
    rng = random.Random(seed + 1)
    corpus = [" ".join(m["content"] for m in conversation(rng)) for _ in range(500)]
    tokenizer = build_tokenizer("chatml", corpus, vocab_size=512)
    model = build_model(tokenizer, hidden_size=64, num_layers=2, seed=seed).eval()
    if not folder.exists():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model, tokenizer


def first_rows(path: Path, n: int) -> list[list[dict]]:
    with path.open() as f:
        return [json.loads(line)["messages"] for line, _ in zip(f, range(n), strict=False)]


def forward_seconds_per_token(model, tokenizer, rows: list[list[dict]]) -> float:
    """poft's per-batch forward, as `poft score` runs it, on `rows`: median of 3, seconds per token."""
    chat = ChatFormat.from_tokenizer(tokenizer, "tiny")
    encoded = [
        (np.asarray(e.input_ids, np.int32), np.asarray(e.response_mask, np.uint8))
        for e in chat.encode_many(rows)
    ]
    lengths = [len(ids) for ids, _ in encoded]
    budget = batch_budget(lengths, default_batch_tokens(torch.device("cpu"), torch.float32))
    chunk = scoring_chunk_size(model.get_output_embeddings().weight.shape[0])
    times = []
    with torch.inference_mode():
        for _ in range(3):
            started = time.perf_counter()
            for batch in packed_batches(lengths, budget):
                packed_logprob_sums(model, [encoded[i] for i in batch], chunk_size=chunk)
            times.append(time.perf_counter() - started)
    return statistics.median(times) / sum(lengths)


def sample_memory(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Every 20 ms until `stop`: the child's resident memory by kind (/proc/PID/status), keeping the peaks of
    its private memory (RssAnon + RssShmem: what it allocated) and of its file-backed pages (RssFile:
    memory-mapped files such as Arrow datasets, which the kernel drops under memory pressure)."""
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.02):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except (OSError, ValueError):
            continue
        kib = {
            k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem") if k in fields
        }
        if len(kib) == 4 and _exec_done(pid):
            peaks["rss"] = max(peaks.get("rss", 0), kib["VmRSS"])
            peaks["anon"] = max(peaks.get("anon", 0), kib["RssAnon"] + kib["RssShmem"])
            peaks["file"] = max(peaks.get("file", 0), kib["RssFile"])


def _exec_done(pid: int) -> bool:
    """Whether the child runs its command yet (before `exec` it is a copy of this process, whose pages the
    kernel counts as its own: that is why `ru_maxrss` is not used)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return False


def run(command: list[str]) -> dict:
    """One command in a fresh process: wall and CPU seconds, its own peak RSS (and its private and
    file-backed peaks, sampled), load before and after."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=CHILD_ENV)
    peaks, stop = {}, threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(child.pid, peaks, stop), daemon=True)
    sampler.start()
    output = child.stdout.read()
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{' '.join(command)} failed ({child.returncode}):\n{output.decode()[-4000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(peaks.get("rss", 0) / 1024, 1),
        "peak_private_mb": round(peaks.get("anon", 0) / 1024, 1),
        "peak_file_mb": round(peaks.get("file", 0) / 1024, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def measure(n: int, args, model, tokenizer, model_dir: Path) -> dict:
    rows = args.workdir / f"rows-{n}-seed{args.seed}.jsonl"
    write_rows(rows, n, args.seed)
    scored, filtered, inspected = (args.workdir / f"{what}-{n}" for what in ("scored", "filtered", "inspect"))
    for folder in (scored, filtered, inspected):
        shutil.rmtree(folder, ignore_errors=True)
    score = [
        str(POFT),
        "score",
        "--dataset",
        str(rows),
        "--model",
        f"tiny={model_dir}",
        "--output",
        str(scored),
    ]
    commands = {
        "score": [*score, "--dtype", "float32", "--no-progress"],
        "filter": [str(POFT), "filter", str(scored), "--keep-top", "0.5", "--output", str(filtered)],
        "inspect": [str(POFT), "inspect", str(scored), "--output", str(inspected)],
    }
    result = {}
    for name, command in commands.items():
        result[name] = run(command)
        result[name]["s_per_1k_rows"] = round(result[name]["wall_s"] / n * 1000, 4)
        if name == "score":
            manifest = json.loads((scored / "manifest.json").read_text())
            tokens = manifest["throughput"]["tokens_this_run"]
            sample = first_rows(rows, min(n, args.forward_sample))
            per_token = forward_seconds_per_token(model, tokenizer, sample)
            result[name] |= {
                "tokens": tokens,
                "manifest_scoring_s": manifest["throughput"]["scoring_seconds_this_run"],
                "forward_s": round(per_token * tokens, 2),
                "forward_share": round(per_token * tokens / result[name]["wall_s"], 3),
            }
        print(f"{n} rows, {name}: {json.dumps(result[name])}", flush=True)
    if not args.keep:
        for folder in (scored, filtered, inspected):
            shutil.rmtree(folder, ignore_errors=True)
    return result


def against_base(results: dict[int, dict]) -> dict:
    base_n = min(results)
    base = results[base_n]
    out = {}
    for n, res in results.items():
        out[n] = {}
        for name, r in res.items():
            out[n][name] = {
                "rss_diff_mb": round(r["peak_rss_mb"] - base[name]["peak_rss_mb"], 1),
                "private_diff_mb": round(r["peak_private_mb"] - base[name]["peak_private_mb"], 1),
                "time_per_row_ratio": round(r["s_per_1k_rows"] / base[name]["s_per_1k_rows"], 3),
            }
        score = out[n]["score"]
        score["targets"] = {
            f"peak RSS within {RSS_TARGET_MB:.0f} MB of {base_n}": score["rss_diff_mb"] <= RSS_TARGET_MB,
            f"peak private memory within {RSS_TARGET_MB:.0f} MB of {base_n}": score["private_diff_mb"]
            <= RSS_TARGET_MB,
            f"time per row within {TIME_TARGET}x of {base_n}": score["time_per_row_ratio"] <= TIME_TARGET,
            f"forward >= {FORWARD_TARGET:.0%} of the time": res["score"]["forward_share"] >= FORWARD_TARGET,
        }
    return out


def print_table(results: dict[int, dict], ratios: dict[int, dict]) -> None:
    print("\n| rows | command | wall s | cpu s | s/1k rows | peak RSS MB | private / file-backed peak MB | "
          "load before -> after | RSS diff vs base MB | private diff MB | time/row vs base |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, res in results.items():
        for name, r in res.items():
            q = ratios[n][name]
            print(f"| {n:,} | {name} | {r['wall_s']} | {r['cpu_s']} | {r['s_per_1k_rows']} | {r['peak_rss_mb']} | "
                  f"{r['peak_private_mb']} / {r['peak_file_mb']} | {r['load_before']} -> {r['load_after']} | "
                  f"{q['rss_diff_mb']:+} | {q['private_diff_mb']:+} | {q['time_per_row_ratio']}x |")  # fmt: skip
    print()
    for n, res in results.items():
        s = res["score"]
        print(f"{n:,} rows: score {s['tokens']:,} tokens, forward {s['forward_s']} s of {s['wall_s']} s wall "
              f"({s['forward_share']:.0%}); manifest scoring {s['manifest_scoring_s']} s")  # fmt: skip
        for target, met in ratios[n]["score"]["targets"].items():
            print(f"    {target}: {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/poft-bench-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forward-sample", type=int, default=5000, help="rows timed for the forward bound")
    parser.add_argument("--keep", action="store_true", help="keep the scored/filtered/inspect folders")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / f"tiny-seed{args.seed}"
    model, tokenizer = build_tiny(model_dir, args.seed)
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()}", flush=True
    )
    results = {n: measure(n, args, model, tokenizer, model_dir) for n in sorted(args.rows)}
    ratios = against_base(results)
    print_table(results, ratios)
    summary = {
        "rows": sorted(args.rows), "results": results, "vs_base": ratios, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "gpu": "not measured on GPU", "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
