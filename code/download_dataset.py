"""6.1.3 / 6.2.2: download the chapter's datasets for the real job on a GPU box.

    python code/download_dataset.py pretrain --local_dir autodl-tmp/dataset/pretrain_data --small_lines 1000000
    python code/download_dataset.py sft --local_dir autodl-tmp/dataset/sft_data

pretrain: the Mobvoi seq-monkey corpus (JSON lines {"text": ...}) from ModelScope, as in chapter 5
(needs `pip install modelscope`); --small_lines also writes the first N lines to *_small.jsonl,
the file code/pretrain.sh reads. sft: BelleGroup/train_3.5M_CN from the Hugging Face hub.
Never run in CI: the course itself trains on data/sample/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from itertools import islice

SEQ_MONKEY = ("ddzhu123/seq-monkey", "mobvoi_seq_monkey_general_open_corpus.jsonl.tar.bz2")
BELLE = "BelleGroup/train_3.5M_CN"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["pretrain", "sft"])
    parser.add_argument("--local_dir", required=True)
    parser.add_argument("--small_lines", type=int, default=None, help="pretrain: also write the first N lines")
    parser.add_argument("--endpoint", default=None, help="Hub mirror for sft, e.g. https://hf-mirror.com")
    args = parser.parse_args(argv)
    if args.endpoint:
        os.environ["HF_ENDPOINT"] = args.endpoint
    try:
        path = download_pretrain(args.local_dir, args.small_lines) if args.which == "pretrain" else download_sft(args.local_dir)
    except Exception as err:  # offline, missing tool, mirror down: all end the same way for the user
        print(f"Could not download the {args.which} data ({type(err).__name__}: {err}).\n"
              "Check the network (HF_HUB_OFFLINE must be unset) or try --endpoint.", file=sys.stderr)
        return 1
    print(f"{args.which} data is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
