"""6.1.5: checkpoints: resume from the newest complete one, or clear them for --overwrite_output_dir.

On the scripts' training path: each script calls `clear_or_resume_output_dir_then_seed` only after its inputs
have been read and checked, so a typo in a data path never costs the learner the previous run's checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from transformers import TrainingArguments, set_seed

from llmtrain.errors import LlmtrainError

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """The checkpoint-N folders of `output_dir` as (N, path), oldest first."""
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def delete_checkpoints(training_args: TrainingArguments) -> None:
    """6.1.5: --overwrite_output_dir: delete output_dir's checkpoint-* folders (on the main process) to start over.

    Every rank enters the barrier whatever it sees on disk: the folder can appear between two ranks' looks (another
    rank creating it), and a rank that skipped the barrier left the others waiting for ever.
    """
    with training_args.main_process_first(desc="clearing old checkpoints"):
        if training_args.process_index == 0 and os.path.isdir(training_args.output_dir):
            for _, path in list_checkpoints(training_args.output_dir):
                logger.warning("--overwrite_output_dir: deleting %s", path)
                shutil.rmtree(path)


def find_resume_checkpoint(training_args: TrainingArguments, overwrite_output_dir: bool = False) -> str | None:
    """6.1.5: the checkpoint to resume from: the user's, else the newest complete one in output_dir.

    A checkpoint is complete once Trainer has written its trainer_state.json (the last file it
    writes), so a run killed while saving resumes from the previous checkpoint. A non-empty
    output_dir without any checkpoint is an error, unless --overwrite_output_dir says to start over
    (then nothing is resumed; `delete_checkpoints` clears the old ones).
    """
    if training_args.resume_from_checkpoint:
        if not os.path.isfile(os.path.join(training_args.resume_from_checkpoint, TRAINER_STATE)):
            raise LlmtrainError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: not a complete checkpoint "
                f"(no {TRAINER_STATE}). Pass a checkpoint-N folder written by Trainer."
            )
        return training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    if overwrite_output_dir or not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    checkpoints = list_checkpoints(output_dir)
    complete = [path for _, path in checkpoints if os.path.isfile(os.path.join(path, TRAINER_STATE))]
    for _, path in checkpoints:
        if path not in complete:
            logger.warning("Ignoring incomplete checkpoint %s (no %s)", path, TRAINER_STATE)
    if complete:
        logger.info("Resuming training from %s", complete[-1])
        return complete[-1]
    raise LlmtrainError(
        f"Output directory {output_dir} is not empty and holds no checkpoint to resume from. "
        "Pass --overwrite_output_dir to train into it anyway, or choose another --output_dir."
    )


def clear_or_resume_output_dir_then_seed(training_args: TrainingArguments, overwrite_output_dir: bool) -> str | None:
    """6.1.5: the step every script takes once its inputs are checked: with --overwrite_output_dir delete the old
    checkpoints, else find the one to resume from; then seed every generator. Returns the checkpoint or None.

    The resume check runs before any deletion, so a non-empty folder without checkpoints stops the run with its
    message and nothing deleted.
    """
    checkpoint = find_resume_checkpoint(training_args, overwrite_output_dir)
    if overwrite_output_dir:
        delete_checkpoints(training_args)
    set_seed(training_args.seed)
    return checkpoint
