"""6.1.2: build the toy assets (tokenizer + tiny Qwen2 config) in one folder, like a downloaded model.

    python -m llmtrain.toy --output_dir artifacts/toy --train_file data/sample/pretrain.jsonl

The folder then loads with AutoTokenizer/AutoConfig exactly as a Qwen2.5 folder does. Same
sample data, same assets: BPE training and the config are deterministic.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llmtrain import PROJECT_ROOT
from llmtrain.errors import LlmtrainError
from llmtrain.modeling import toy_config
from llmtrain.pretrain_data import read_jsonl_texts
from llmtrain.tokenizer import train_toy_tokenizer

logger = logging.getLogger(__name__)


def build_toy_assets(output_dir: str, train_files: list[str], vocab_size: int = 2048) -> None:
    """6.1.2: train the toy tokenizer on `train_files` and save it with a tiny Qwen2 config in `output_dir`.

    Written to a temporary folder first and moved into place, so a failure leaves nothing behind.
    """
    texts = [text for path in train_files for text in read_jsonl_texts(path)]
    tokenizer = train_toy_tokenizer(texts, vocab_size=vocab_size)
    config = toy_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".toy-")
    try:
        tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Toy assets in %s: vocab %d, %d layers, hidden %d", output_dir, len(tokenizer),
                config.num_hidden_layers, config.hidden_size)


def ensure_toy_pretrained(root: Path = PROJECT_ROOT) -> Path:
    """6.2: the toy pretrained model that SFT and LoRA start from (`output/toy/pretrain`, as `make run` leaves it).

    When it is missing or older than the toy assets, it is pretrained here the same way:
    `PRESET=toy bash code/pretrain.sh` (DeepSpeed, 2 CPU processes, about half a minute).
    """
    toy, out = root / "artifacts" / "toy", root / "output" / "toy" / "pretrain"
    if not (toy / "config.json").is_file():
        build_toy_assets(str(toy), [str(root / "data" / "sample" / "pretrain.jsonl")])
    weights = out / "model.safetensors"
    if weights.is_file() and weights.stat().st_mtime >= (toy / "config.json").stat().st_mtime:
        return out
    shutil.rmtree(out, ignore_errors=True)
    run_bash_script(root / "code" / "pretrain.sh", PRESET="toy", OUTPUT_DIR=str(out))
    return out


def run_bash_script(script: Path, **env: str) -> str:
    """Run one of the course's code/*.sh launchers with this interpreter's environment first on PATH.

    Returns the combined output; a failure raises with the output's tail, so a notebook shows why.
    """
    full_env = dict(os.environ, **env)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    run = subprocess.run(["bash", str(script)], env=full_env, capture_output=True, text=True)
    if run.returncode != 0:
        raise LlmtrainError(f"{script.name} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return run.stdout + run.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="artifacts/toy")
    parser.add_argument("--train_file", nargs="+", default=["data/sample/pretrain.jsonl"])
    parser.add_argument("--vocab_size", type=int, default=2048)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(name)s - %(message)s")
    try:
        build_toy_assets(args.output_dir, args.train_file, args.vocab_size)
    except LlmtrainError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
