"""6.5: RL with a verifiable reward (GRPO) on an SFT model, with TRL's GRPOTrainer (+ DeepSpeed via `deepspeed`).

Prompts are JSON lines {"prompt": "...", "answer": "...", "task": "fact" | "arithmetic"}
(`llmtrain.grading.load_prompt_dataset`); no reward model: a program scores every sampled reply
(`llmtrain.grading.REWARDS`: the scorecard's strict rule for facts, the exact final integer for arithmetic).
For each prompt TRL samples `--num_generations` replies, scores them, turns each score into an advantage
relative to its group and takes a clipped policy-ratio step with a `--beta`-weighted KL penalty towards
the reference (`llmtrain.grpo` writes the same objective from scratch and tests it against TRL's).
`--block_size` caps prompt + reply: a prompt longer than block_size - max_completion_length is
dropped and counted. `--use_lora` trains LoRA adapters and the reference is the same model with the adapter disabled.
With `--eval_files`, greedy accuracy on held-out prompts is measured before and after training
(eval_results.json, every reply in eval_replies.json). Resume, saving and errors behave as in
code/dpo.py: a bad prompt file stops the run with its file and line before anything is written.

    python code/grpo.py --model_name_or_path output/toy/sft --train_files data/sample/grpo.jsonl \
        --eval_files data/sample/grpo_eval.jsonl --use_lora --output_dir output/try-grpo --max_steps 20
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer

from llmtrain.args import DataArguments, LoraArguments, RunArguments, TRLModelArguments
from llmtrain.checkpoints import clear_or_resume_output_dir_then_seed
from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.evaluation import task_accuracy
from llmtrain.grading import fact_candidates, load_prompt_dataset
from llmtrain.grpo import drop_long_prompts, stop_at_end_of_turn, trl_reward_function, trl_style_reward
from llmtrain.launch import parse_flags_and_set_up_process
from llmtrain.lora import parameter_summary, peft_lora_config
from llmtrain.modeling import load_config, load_model, load_tokenizer, resolve_block_size
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE
from llmtrain.training import save_merged_model, train_and_save

logger = logging.getLogger(__name__)
REWARD_KEYS = ("reward", "reward_std", "rewards/verifiable/mean", "rewards/style/mean", "frac_reward_zero_std", "kl",
               "completions/mean_length")


@dataclass
class PromptArguments:
    """6.5: held-out prompts and the system prompt."""

    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out prompt JSON lines: greedy accuracy before and after training."},
    )
    system_message: str = field(default=DEFAULT_SYSTEM_MESSAGE, metadata={"help": "System prompt of every prompt."})
    style_suffix: str | None = field(
        default=None, metadata={"help": "6.4's closing sentence: replies are scored without it (as the scorecard "
                                        "grades) and, with --style_weight, rewarded for ending with it."})
    style_weight: float = field(
        default=0.0, metadata={"help": "Weight of the format reward for ending with --style_suffix (0: none)."})


def main() -> None:
    # 1. 解析参数:提示数据、LoRA、RunArguments 与 TRL 的 GRPOConfig;精度默认随机器,CPU 上的 DeepSpeed 先建 gloo 进程组
    model_args, data_args, prompt_args, lora_args, run_args, training_args = parse_flags_and_set_up_process(
        (TRLModelArguments, DataArguments, PromptArguments, LoraArguments, RunArguments, GRPOConfig),
        sys.argv[1:])
    if not data_args.train_files:
        raise LlmtrainError('Pass --train_files with JSON-lines files of {"prompt", "answer", "task"} records.')
    if not model_args.model_name_or_path:
        raise LlmtrainError("GRPO starts from an SFT model: pass --model_name_or_path (a model folder).")
    if lora_args.use_qlora:
        raise LlmtrainError("--use_qlora: grpo.py trains LoRA on the unquantised SFT model; use --use_lora.")
    if data_args.validation_split_percentage:
        raise LlmtrainError("GRPO holds out prompts in a file of their own: pass --eval_files, not "
                            "--validation_split_percentage.")
    if prompt_args.style_weight and not prompt_args.style_suffix:
        raise LlmtrainError("--style_weight rewards ending with --style_suffix: pass the sentence too.")

    # 2. 提示数据(6.5):读取并校验;输入有错在这里就停下,输出目录还没动过
    config = load_config(model_args.model_name_or_path, training_args.trust_remote_code, "--model_name_or_path")
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               training_args.trust_remote_code)
    with training_args.main_process_first(desc="checking prompt files"):
        train = load_prompt_dataset(data_args.train_files, prompt_args.system_message)
        held_out = load_prompt_dataset(prompt_args.eval_files, prompt_args.system_message) \
            if prompt_args.eval_files else None
    block_size = resolve_block_size(config, data_args.block_size, default=1024)
    max_prompt_tokens = block_size - training_args.max_completion_length
    if max_prompt_tokens < 1:
        raise LlmtrainError(f"--block_size {block_size} leaves no room for a prompt beside --max_completion_length "
                            f"{training_args.max_completion_length}: raise the first or lower the second.")
    train, dropped = drop_long_prompts(train, tokenizer, max_prompt_tokens)
    if not len(train):
        raise LlmtrainError(f"Every prompt of {data_args.train_files} is longer than {max_prompt_tokens} tokens "
                            f"(--block_size {block_size} - --max_completion_length "
                            f"{training_args.max_completion_length}): raise --block_size.")
    logger.info("Training files: %s (%d prompts, %d longer than %d tokens dropped; %d replies each)",
                data_args.train_files, len(train), dropped, max_prompt_tokens, training_args.num_generations)
    model = load_model(None, model_args.model_name_or_path, model_args.dtype, training_args.trust_remote_code)
    stop_at_end_of_turn(model, tokenizer)
    peft_config = peft_lora_config(model, lora_args.lora_target_modules, lora_args.lora_r, lora_args.lora_alpha,
                                   lora_args.lora_dropout) if lora_args.use_lora else None
    # 3. 断点:--overwrite_output_dir 时删掉旧 checkpoint,否则从最新的完整 checkpoint 继续;再设随机种子
    checkpoint = clear_or_resume_output_dir_then_seed(training_args, run_args.overwrite_output_dir)
    max_new_tokens = training_args.max_completion_length
    before = None
    if held_out is not None and training_args.process_index == 0 and checkpoint is None:
        before = task_accuracy(model, tokenizer, held_out, max_new_tokens, prompt_args.style_suffix)
        logger.info("Held-out accuracy before GRPO: %.3f (%d prompts)", before["accuracy"], len(held_out))

    # 4. GRPO 训练(TRL):每个问题采样一组回答,程序打分,组内相对优势,带 KL 的裁剪目标
    reward_funcs = [trl_reward_function(fact_candidates(train), prompt_args.style_suffix)]
    if prompt_args.style_weight:  # TRL sums the weighted rewards before the group-relative advantage
        reward_funcs.append(trl_style_reward(prompt_args.style_suffix))
        training_args.reward_weights = [1.0, prompt_args.style_weight]
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=train,
                          processing_class=tokenizer, peft_config=peft_config)
    logger.info("%s; reference: %s", parameter_summary(trainer.model),
                "the same model with the LoRA adapter disabled" if trainer.ref_model is None
                else "a second, frozen copy of the model" if training_args.beta else "none (beta = 0)")
    metrics = train_and_save(trainer, checkpoint)
    last = next((e for e in reversed(trainer.state.log_history) if "reward" in e), None)
    if last is not None:  # none when a resumed run had no step left to train
        metrics.update({k: last[k] for k in REWARD_KEYS if k in last})
        trainer.save_metrics("train", metrics)
        logger.info("Last training log: reward %.3f (std %.3f), KL %.4f", last["reward"], last["reward_std"],
                    last.get("kl", 0.0))

    # 5. 留出提示上的贪心准确率(训练前后);LoRA 另存合并后的完整模型
    if held_out is not None and trainer.is_world_process_zero():
        after = task_accuracy(trainer.model, tokenizer, held_out, max_new_tokens, prompt_args.style_suffix)
        result = {"eval_accuracy": after["accuracy"], "eval_prompts": len(held_out)}
        if before is not None:
            result["eval_accuracy_before"] = before["accuracy"]
        trainer.log_metrics("eval", result)
        trainer.save_metrics("eval", result)
        with open(os.path.join(training_args.output_dir, "eval_replies.json"), "w", encoding="utf-8") as f:
            json.dump({"before": before and before["replies"], "after": after["replies"]}, f, ensure_ascii=False,
                      indent=1)
        logger.info("Held-out accuracy after GRPO: %.3f%s", after["accuracy"],
                    "" if before is None else f" (before: {before['accuracy']:.3f})")
    if lora_args.use_lora and lora_args.merge_lora and trainer.is_world_process_zero():
        save_merged_model(trainer.model, tokenizer, training_args.output_dir)


if __name__ == "__main__":
    run_cli(main)
