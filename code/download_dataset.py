"""6.1.3 / 6.2.2: download the chapter's datasets for the real job on a GPU box.

    python code/download_dataset.py pretrain --local_dir autodl-tmp/dataset/pretrain_data --small_lines 1000000
    python code/download_dataset.py sft --local_dir autodl-tmp/dataset/sft_data
    python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data
    python code/download_dataset.py gsm8k --local_dir autodl-tmp/dataset/gsm8k
    python code/download_dataset.py benchmarks --local_dir autodl-tmp/dataset/benchmarks

pretrain: the Mobvoi seq-monkey corpus (JSON lines {"text": ...}) from ModelScope, as in chapter 5
(needs `pip install modelscope`); --small_lines also writes the first N lines to *_small.jsonl,
the file code/pretrain.sh reads. sft: BelleGroup/train_3.5M_CN from the Hugging Face hub.
dpo (6.4): the Chinese half of llamafactory/DPO-En-Zh-20k (10,000 pairs, Apache-2.0, mostly
wenbopan/Chinese-dpo-pairs), converted to dpo_zh.jsonl in the conversational form code/dpo.py reads;
pairs with an empty or identical reply are skipped and counted. gsm8k (6.5): openai/gsm8k (main, MIT),
grade-school word problems whose reference answer ends "#### <integer>", converted to train.jsonl and
test.jsonl of {"prompt", "answer", "task": "arithmetic"} records for code/grpo.py (the reward is the
exact final integer of a reply). benchmarks (7.1): C-Eval, CMMLU and GSM8K as lm-eval's tasks read them
(llmtrain.harness.BENCHMARK_TASKS), into a datasets cache in --local_dir; code/benchmark.py then reads them
offline with HF_DATASETS_CACHE=<that folder>.
Never run in CI: the course itself trains on data/sample/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from itertools import islice

SEQ_MONKEY = ("ddzhu123/seq-monkey", "mobvoi_seq_monkey_general_open_corpus.jsonl.tar.bz2")
BELLE = "BelleGroup/train_3.5M_CN"
DPO_ZH = ("llamafactory/DPO-En-Zh-20k", "zh")
GSM8K = ("openai/gsm8k", "main")
GSM8K_INSTRUCTION = "请一步一步地推理,最后一行只写出最终的整数答案。"
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def download_pretrain(local_dir: str, small_lines: int | None) -> str:
    if shutil.which("modelscope") is None:
        raise RuntimeError("the `modelscope` command is missing: pip install modelscope")
    repo, archive = SEQ_MONKEY
    subprocess.run(["modelscope", "download", "--dataset", repo, archive, "--local_dir", local_dir], check=True)
    with tarfile.open(os.path.join(local_dir, archive)) as tar:
        tar.extractall(local_dir, filter="data")
    corpus = os.path.join(local_dir, archive.removesuffix(".tar.bz2"))
    if small_lines:
        small = corpus.replace(".jsonl", "_small.jsonl")
        with open(corpus, encoding="utf-8") as src, open(small + ".part", "w", encoding="utf-8") as dst:
            dst.writelines(islice(src, small_lines))
        os.replace(small + ".part", small)
        return small
    return corpus


def download_sft(local_dir: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=BELLE, repo_type="dataset", local_dir=local_dir)


def sharegpt_pair_to_jsonl(example: dict) -> dict | None:
    """One LLaMA-Factory ShareGPT pair -> {"prompt": [messages], "chosen": [reply], "rejected": [reply]}, or None."""
    turns = example["conversations"]
    if any(t["from"] not in SHAREGPT_ROLES for t in turns):
        return None
    replies = [r["value"] if isinstance(r, dict) else r for r in (example["chosen"], example["rejected"])]
    if not all(isinstance(r, str) and r.strip() for r in replies) or replies[0] == replies[1]:
        return None
    return {"prompt": [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns],
            "chosen": [{"role": "assistant", "content": replies[0]}],
            "rejected": [{"role": "assistant", "content": replies[1]}]}


def write_converted_jsonl(path: str, examples, convert) -> tuple[int, int]:
    """`convert` each example and write the records it returns as JSON lines to `path` (through `path`.part, so
    an interrupted download leaves no half-written file); returns (written, skipped: `convert` returned None)."""
    kept = skipped = 0
    with open(path + ".part", "w", encoding="utf-8") as f:
        for example in examples:
            record = convert(example)
            if record is None:
                skipped += 1
                continue
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            kept += 1
    os.replace(path + ".part", path)
    return kept, skipped


def download_dpo(local_dir: str) -> str:
    from datasets import load_dataset

    os.makedirs(local_dir, exist_ok=True)
    path = os.path.join(local_dir, "dpo_zh.jsonl")
    kept, skipped = write_converted_jsonl(path, load_dataset(*DPO_ZH, split="train"), sharegpt_pair_to_jsonl)
    print(f"{kept} pairs written, {skipped} skipped (unknown role, empty or identical replies)")
    return path


def gsm8k_to_prompt(example: dict) -> dict | None:
    """One GSM8K problem -> {"prompt", "answer", "task": "arithmetic"}, or None when its answer is no integer."""
    answer = example["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
    if "####" not in example["answer"] or not answer.lstrip("-").isdigit():
        return None
    return {"prompt": f"{example['question'].strip()}\n{GSM8K_INSTRUCTION}", "answer": answer, "task": "arithmetic"}


def download_gsm8k(local_dir: str) -> str:
    from datasets import load_dataset

    os.makedirs(local_dir, exist_ok=True)
    for split in ("train", "test"):
        kept, skipped = write_converted_jsonl(os.path.join(local_dir, f"{split}.jsonl"),
                                              load_dataset(*GSM8K, split=split), gsm8k_to_prompt)
        print(f"{split}: {kept} prompts written, {skipped} skipped (no integer answer)")
    return local_dir


def download_benchmarks(local_dir: str) -> str:
    os.environ["HF_DATASETS_CACHE"] = os.path.abspath(local_dir)  # before anything imports datasets
    from llmtrain.harness import BENCHMARK_TASKS, download_benchmark_datasets

    download_benchmark_datasets(list(BENCHMARK_TASKS))
    return local_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["pretrain", "sft", "dpo", "gsm8k", "benchmarks"])
    parser.add_argument("--local_dir", required=True)
    parser.add_argument("--small_lines", type=int, default=None, help="pretrain: also write the first N lines")
    parser.add_argument("--endpoint", default=None, help="Hub mirror for sft, dpo and gsm8k, e.g. https://hf-mirror.com")
    args = parser.parse_args(argv)
    if args.endpoint:
        os.environ["HF_ENDPOINT"] = args.endpoint
    try:
        if args.which == "pretrain":
            path = download_pretrain(args.local_dir, args.small_lines)
        else:
            path = {"sft": download_sft, "dpo": download_dpo, "gsm8k": download_gsm8k,
                    "benchmarks": download_benchmarks}[args.which](args.local_dir)
    except Exception as err:  # offline, missing tool, mirror down: all end the same way for the user
        print(f"Could not download the {args.which} data ({type(err).__name__}: {err}).\n"
              "Check the network (HF_HUB_OFFLINE must be unset) or try --endpoint.", file=sys.stderr)
        return 1
    print(f"{args.which} data is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
