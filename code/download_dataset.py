"""6.1.3 / 6.2.2: download the chapter's datasets for the real job on a GPU box.

    python code/download_dataset.py pretrain --local_dir autodl-tmp/dataset/pretrain_data --small_lines 1000000
    python code/download_dataset.py sft --local_dir autodl-tmp/dataset/sft_data
    python code/download_dataset.py dpo --local_dir autodl-tmp/dataset/dpo_data

pretrain: the Mobvoi seq-monkey corpus (JSON lines {"text": ...}) from ModelScope, as in chapter 5
(needs `pip install modelscope`); --small_lines also writes the first N lines to *_small.jsonl,
the file code/pretrain.sh reads. sft: BelleGroup/train_3.5M_CN from the Hugging Face hub.
dpo (6.4): the Chinese half of llamafactory/DPO-En-Zh-20k (10,000 pairs, Apache-2.0, mostly
wenbopan/Chinese-dpo-pairs), converted to dpo_zh.jsonl in the conversational form code/dpo.py reads;
pairs with an empty or identical reply are skipped and counted.
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


def download_dpo(local_dir: str) -> str:
    from datasets import load_dataset

    pairs = load_dataset(*DPO_ZH, split="train")
    os.makedirs(local_dir, exist_ok=True)
    path, kept, skipped = os.path.join(local_dir, "dpo_zh.jsonl"), 0, 0
    with open(path + ".part", "w", encoding="utf-8") as f:
        for example in pairs:
            pair = sharegpt_pair_to_jsonl(example)
            if pair is None:
                skipped += 1
                continue
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
            kept += 1
    os.replace(path + ".part", path)
    print(f"{kept} pairs written, {skipped} skipped (unknown role, empty or identical replies)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["pretrain", "sft", "dpo"])
    parser.add_argument("--local_dir", required=True)
    parser.add_argument("--small_lines", type=int, default=None, help="pretrain: also write the first N lines")
    parser.add_argument("--endpoint", default=None, help="Hub mirror for sft and dpo, e.g. https://hf-mirror.com")
    args = parser.parse_args(argv)
    if args.endpoint:
        os.environ["HF_ENDPOINT"] = args.endpoint
    try:
        if args.which == "pretrain":
            path = download_pretrain(args.local_dir, args.small_lines)
        else:
            path = download_sft(args.local_dir) if args.which == "sft" else download_dpo(args.local_dir)
    except Exception as err:  # offline, missing tool, mirror down: all end the same way for the user
        print(f"Could not download the {args.which} data ({type(err).__name__}: {err}).\n"
              "Check the network (HF_HUB_OFFLINE must be unset) or try --endpoint.", file=sys.stderr)
        return 1
    print(f"{args.which} data is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
