"""6.1.2: download a model folder (config, tokenizer, weights) for the real job on a GPU box.

    python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir autodl-tmp/qwen-1.5b
    python code/download_model.py --repo_id Qwen/Qwen2.5-1.5B --local_dir ... --endpoint https://hf-mirror.com

Pretraining from scratch only needs the config and tokenizer (--config_only skips the weights).
Never run in CI: the course itself builds everything from local files.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo_id", default="Qwen/Qwen2.5-1.5B")
    parser.add_argument("--local_dir", default="autodl-tmp/qwen-1.5b")
    parser.add_argument("--endpoint", default=None, help="Hub mirror, e.g. https://hf-mirror.com (the chapter's)")
    parser.add_argument("--config_only", action="store_true", help="Config and tokenizer files only, no weights")
    args = parser.parse_args(argv)
    if args.endpoint:
        os.environ["HF_ENDPOINT"] = args.endpoint  # read when huggingface_hub is imported
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.jinja", "merges.txt"] if args.config_only else None
    try:
        path = snapshot_download(repo_id=args.repo_id, local_dir=args.local_dir, allow_patterns=patterns)
    except Exception as err:  # offline, unknown repo, mirror down: all end the same way for the user
        print(
            f"Could not download {args.repo_id} ({type(err).__name__}: {err}).\n"
            "Check the network (HF_HUB_OFFLINE must be unset) or try --endpoint https://hf-mirror.com.",
            file=sys.stderr,
        )
        return 1
    print(f"{args.repo_id} is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
