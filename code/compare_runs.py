"""Print finished training runs side by side: trainable parameters, loss, time, throughput.

    python code/compare_runs.py output/toy/sft output/toy/sft-lora
"""

import json
import sys
from pathlib import Path

from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.plotting import read_log_history


def main(run_dirs: list[str]) -> None:
    print("| run | trainable params | first logged loss | last logged loss | train time (s) | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in map(Path, run_dirs):
        try:
            results = json.loads((run / "train_results.json").read_text())
            logs = [e for e in read_log_history(str(run / "trainer_state.json")) if "loss" in e]
        except (OSError, ValueError, KeyError) as err:
            raise LlmtrainError(f"{run}: not a finished training run ({err}).") from err
        print(f"| {run.name} | {results['trainable_params']:,} | {logs[0]['loss']:.2f} | {logs[-1]['loss']:.2f} | "
              f"{results['train_runtime']:.1f} | {logs[-1].get('tokens_per_second', float('nan')):,.0f} |")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
