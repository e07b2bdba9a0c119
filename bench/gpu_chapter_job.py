"""Helpers of bench/gpu_chapter_job.sh: build the model folders and data it trains on, and write the results file.

    python bench/gpu_chapter_job.py prepare WORK [--tiny]      model folders (config-only and random weights) + data
    python bench/gpu_chapter_job.py row WORK NAME SCRIPT OUTPUT_DIR SMI_LOG STATUS [key=value ...]
    python bench/gpu_chapter_job.py write WORK RESULTS.json     one results file (bench/results/ schema)
    python bench/gpu_chapter_job.py carried                     name==version of each wheel to carry to a GPU box

The results file has the schema of bench/results/gpu_h200_2026-11-30.json ("llmtrain-gpu-check/1"): the GPU,
driver and versions, how each column is measured, and one row per run. Allocated/reserved come from the training
process (ThroughputCallback logs torch.cuda.max_memory_allocated/max_memory_reserved), nvidia-smi from polling
every 200 ms, tokens/s and MFU are medians over the logged steps 2+.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "code"))

SCHEMA = "llmtrain-gpu-check/1"
COLUMNS = {
    "estimate_gib": "llmtrain.memory estimate of the allocated peak per device (code/estimate_memory.py), GiB",
    "card_gib": "llmtrain.memory.card_memory_needed: the estimate x the allocator reserve factor + CUDA context, GiB",
    "allocated_gib": "torch.cuda.max_memory_allocated() in the training process (rank 0), GiB",
    "reserved_gib": "torch.cuda.max_memory_reserved() in the training process (rank 0), GiB",
    "nvidia_smi_gib": "highest memory.used reading of nvidia-smi polled every 200 ms on GPU 0, GiB",
    "tokens_per_s": "training tokens per second, median over logged steps 2+ (llmtrain.training.ThroughputCallback)",
    "mfu": "6*N*tokens/s over the device's bf16 peak, median over logged steps 2+ (ThroughputCallback)",
    "memory_fraction": "torch.cuda.set_per_process_memory_fraction applied to emulate a smaller card (null: whole GPU)",
    "status": "ok, oom, no_plan (the launcher found no batch that fits) or error, with the last log line",
}


def prepare(work: Path, tiny: bool) -> None:
    """The Qwen2.5-1.5B config (or a tiny one) with the toy tokenizer, config-only and with random weights; data."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmtrain.modeling import qwen2_5_1_5b_config, toy_config
    from llmtrain.toy import ensure_toy_assets

    toy = ensure_toy_assets()
    config = qwen2_5_1_5b_config()
    if tiny:   # the CPU dry run: the same plumbing on a model that trains in seconds
        config = toy_config(vocab_size=config.vocab_size, eos_token_id=config.eos_token_id)
    for name in ("config", "weights"):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(toy / file, folder / file)
    if not (work / "weights" / "model.safetensors").exists() and not list((work / "weights").glob("*.safetensors")):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if tiny else torch.bfloat16)
        model.save_pretrained(work / "weights")
    # Pretraining text: the sample corpus repeated until a few optimizer steps of the chapter's batch have data.
    lines = (ROOT / "data" / "sample" / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()
    repeats = 2 if tiny else 60
    (work / "pretrain.jsonl").write_text("\n".join(lines * repeats) + "\n", encoding="utf-8")
    sft = (ROOT / "data" / "sample" / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    (work / "sft.jsonl").write_text("\n".join(sft * (1 if tiny else 4)) + "\n", encoding="utf-8")
    shutil.copy(ROOT / "data" / "sample" / "dpo.jsonl", work / "dpo.jsonl")
    print(f"prepared {work}: {'tiny' if tiny else 'Qwen2.5-1.5B'} config, random weights, data")


def _median_after_first(history: list[dict], key: str) -> float | None:
    values = [e[key] for e in history if key in e and e.get("step", 0) >= 2]
    return round(statistics.median(values), 4) if values else None


def row(work: Path, name: str, script: str, output_dir: Path, smi_log: Path, status: str, extra: list[str]) -> None:
    """Append one run's row to WORK/rows.jsonl from its trainer_state.json, nvidia-smi log and launch settings."""
    fields = dict(item.split("=", 1) for item in extra)
    state_file = output_dir / "trainer_state.json"
    history = json.loads(state_file.read_text())["log_history"] if state_file.exists() else []
    smi = [float(x) for x in smi_log.read_text().split()] if smi_log.exists() and smi_log.read_text().strip() else []

    def peak(key: str) -> float | None:
        values = [e[key] for e in history if key in e]
        return max(values) if values else None

    def number(key: str, kind=float):
        value = fields.get(key, "")
        return kind(value) if value not in ("", "none") else None

    record = {
        "name": name, "script": script,
        "per_device_batch": number("batch", int), "grad_acc": number("grad_acc", int),
        "activation_checkpointing": fields.get("checkpointing") == "1", "liger": fields.get("liger") == "1",
        "pytorch_cuda_alloc_conf": fields.get("alloc_conf") or None, "memory_fraction": number("fraction"),
        "estimate_gib": number("estimate_gib"), "card_gib": number("card_gib"),
        "allocated_gib": peak("max_memory_allocated_gib"), "reserved_gib": peak("max_memory_reserved_gib"),
        "nvidia_smi_gib": round(max(smi) / 1024, 2) if smi else None,
        "tokens_per_s": _median_after_first(history, "tokens_per_second"), "mfu": _median_after_first(history, "mfu"),
        "status": status,
    }
    if status != "ok":
        record["message"] = fields.get("message", "")
    with open(work / "rows.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    found = {}
    for package in ("torch", "transformers", "datasets", "deepspeed", "accelerate", "peft", "trl", "liger-kernel",
                    "bitsandbytes", "triton"):
        try:
            found[package.replace("-", "_")] = md.version(package)
        except md.PackageNotFoundError:
            found[package.replace("-", "_")] = None
    import torch

    found["cuda"] = torch.version.cuda
    found["python"] = platform.python_version()
    return found


def write(work: Path, results: Path) -> None:
    """Collect WORK/rows.jsonl into one results file with the GPU, driver and versions."""
    import torch

    gpu: dict = {"name": None, "count": 0, "memory_mib": None, "driver": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu.update(name=props.name, count=torch.cuda.device_count(), memory_mib=props.total_memory // 2**20)
        try:
            gpu["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    rows = [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((work / "config" / "config.json").read_text())
    report = {
        "schema": SCHEMA,
        "date": datetime.date.today().isoformat(),
        "source": "bash bench/gpu_chapter_job.sh: the course's launch scripts (PRESET=chapter, NUM_GPUS=1)",
        "gpu": gpu,
        "versions": _versions(),
        "job": {"model": f"Qwen2-style, hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, vocab "
                         f"{config['vocab_size']}, randomly initialised, toy tokenizer",
                "block_size": int(json.loads((work / "settings.json").read_text())["block_size"]),
                "zero_stage": 2},
        "columns": COLUMNS,
        "rows": rows,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {results} ({len(rows)} rows)")


# What the GPU box at hand lacks (it has torch, transformers and accelerate): these packages and what they bring.
CARRIED = ("datasets", "pyarrow", "fsspec", "multiprocess", "dill", "xxhash", "trl", "peft", "liger-kernel", "hjson",
           "ninja", "py-cpuinfo", "msgpack", "einops", "pydantic", "pydantic-core", "typing-inspection",
           "annotated-types", "deepspeed", "bitsandbytes")


def carried() -> list[str]:
    """name==version of each CARRIED package: the version this environment installed from pyproject.toml, or, for a
    package only a GPU box installs (liger-kernel), its pin in pyproject.toml's extras."""
    import importlib.metadata as md
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {re.split(r"[=<>!~ ]", spec, maxsplit=1)[0]: spec
            for spec in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    found = []
    for package in CARRIED:
        try:
            found.append(f"{package}=={md.version(package)}")
        except md.PackageNotFoundError:
            if "==" not in pins.get(package, ""):
                raise SystemExit(f"{package} is neither installed here nor pinned in pyproject.toml") from None
            found.append(pins[package])
    return found


def main(argv: list[str]) -> None:
    if argv[:1] == ["carried"]:
        print(" ".join(carried()))
        return
    command, work = argv[0], Path(argv[1])
    if command == "prepare":
        prepare(work, "--tiny" in argv[2:])
    elif command == "row":
        row(work, argv[2], argv[3], Path(argv[4]), Path(argv[5]), argv[6], argv[7:])
    elif command == "write":
        write(work, Path(argv[2]))
    else:
        raise SystemExit(f"unknown command {command}: prepare, row or write")


if __name__ == "__main__":
    main(sys.argv[1:])
