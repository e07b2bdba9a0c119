"""6.4: preference alignment (DPO) of an SFT model with TRL's DPOTrainer (+ DeepSpeed via `deepspeed`).

Pairs are JSON lines {"prompt": "...", "chosen": "...", "rejected": "..."} (or TRL's conversational
form), rendered with the SFT ChatML by `llmtrain.dpo` and handed to TRL as token ids. `--beta` is
DPO's beta; `--block_size` caps prompt + reply (a prompt that leaves no room is dropped and counted).
`--use_lora` trains LoRA adapters and the reference is the same model with the adapter disabled
(no second copy of the weights); without it TRL loads a second, frozen copy of the model as the
reference. Resume, saving, metrics and errors behave as in code/finetune.py; with `--eval_files`
the held-out reward accuracy and margin are measured after training (before it the policy is the
reference, so every implicit reward is 0).

    python code/dpo.py --model_name_or_path output/toy/sft --train_files data/sample/dpo.jsonl \
        --eval_files data/sample/dpo_heldout.jsonl --use_lora --output_dir output/try-dpo --max_steps 20
"""

import logging
import sys
from dataclasses import dataclass, field

from trl import DPOConfig

from llmtrain.args import DataArguments, LoraArguments, RunArguments, TRLModelArguments
from llmtrain.checkpoints import clear_or_resume_output_dir_then_seed
from llmtrain.dpo import TokenizedPairsDPOTrainer, build_preference_dataset, load_preference_dataset
from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.launch import parse_flags_and_set_up_process
from llmtrain.lora import parameter_summary, peft_lora_config
from llmtrain.modeling import load_config, load_model, load_tokenizer, resolve_block_size
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE
from llmtrain.training import save_merged_model, train_and_save

logger = logging.getLogger(__name__)

REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
               "logps/chosen", "logps/rejected")


@dataclass
class PreferenceArguments:
    """6.4: held-out pairs and the system prompt of pairs that bring none."""

    eval_files: list[str] = field(
        default_factory=list, metadata={"help": "Held-out preference JSON lines: reward accuracy after training."}
    )
    system_message: str = field(
        default=DEFAULT_SYSTEM_MESSAGE, metadata={"help": "System prompt for pairs whose prompt brings none."}
    )


def main() -> None:
    # 1. 解析参数:偏好数据、LoRA、RunArguments 与 TRL 的 DPOConfig;精度默认随机器,CPU 上的 DeepSpeed 先建 gloo 进程组
    model_args, data_args, pref_args, lora_args, run_args, training_args = parse_flags_and_set_up_process(
        (TRLModelArguments, DataArguments, PreferenceArguments, LoraArguments, RunArguments, DPOConfig),
        sys.argv[1:])
    if not data_args.train_files:
        raise LlmtrainError('Pass --train_files with JSON-lines files of {"prompt", "chosen", "rejected"} pairs.')
    if not model_args.model_name_or_path:
        raise LlmtrainError("DPO starts from an SFT model: pass --model_name_or_path (a model folder).")
    if lora_args.use_qlora:
        raise LlmtrainError("--use_qlora: dpo.py trains LoRA on the unquantised SFT model; QLoRA is in finetune.py "
                            "(USE_QLORA=1 bash code/finetune.sh). Use --use_lora here.")
    if data_args.validation_split_percentage:
        raise LlmtrainError("DPO holds out pairs from a file of their own: pass --eval_files, not "
                            "--validation_split_percentage.")

    # 2. 偏好数据(6.4):读取并校验偏好对,渲染成与 SFT 相同的 ChatML;输入有错在这里就停下,输出目录还没动过
    config = load_config(model_args.model_name_or_path, training_args.trust_remote_code, "--model_name_or_path")
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               training_args.trust_remote_code)
    # --block_size is TRL's max_length: the collator cuts prompt + reply to it
    training_args.max_length = resolve_block_size(config, data_args.block_size, default=training_args.max_length or 1024)
    with training_args.main_process_first(desc="checking and rendering preference pairs"):
        raw_train = load_preference_dataset(data_args.train_files, pref_args.system_message)
        raw_eval = load_preference_dataset(pref_args.eval_files, pref_args.system_message) if pref_args.eval_files \
            else None
        logger.info("Training files: %s (%d pairs)", data_args.train_files, len(raw_train))
        train = build_preference_dataset(raw_train, tokenizer, training_args.max_length,
                                         data_args.preprocessing_num_workers)
        held_out = None if raw_eval is None else build_preference_dataset(
            raw_eval, tokenizer, training_args.max_length, data_args.preprocessing_num_workers)
    model = load_model(None, model_args.model_name_or_path, model_args.dtype, training_args.trust_remote_code)
    peft_config = peft_lora_config(model, lora_args.lora_target_modules, lora_args.lora_r, lora_args.lora_alpha,
                                   lora_args.lora_dropout) if lora_args.use_lora else None
    # 3. 断点:--overwrite_output_dir 时删掉旧 checkpoint,否则从最新的完整 checkpoint 继续;再设随机种子
    checkpoint = clear_or_resume_output_dir_then_seed(training_args, run_args.overwrite_output_dir)

    # 4. DPO 训练(TRL):LoRA 时参考模型 = 关掉适配器的同一个模型,全参数时另存一份冻结副本
    model.config.use_cache = False  # training never reuses a KV cache; `train_and_save` turns it back on
    trainer = TokenizedPairsDPOTrainer(model=model, ref_model=None, args=training_args, train_dataset=train,
                                       processing_class=tokenizer, peft_config=peft_config)
    logger.info("%s; reference: %s", parameter_summary(trainer.model),
                "the same model with the LoRA adapter disabled" if trainer.ref_model is None
                else "a second, frozen copy of the model")

    metrics = train_and_save(trainer, checkpoint)
    last_rewards = next((e for e in reversed(trainer.state.log_history) if "rewards/accuracies" in e), None)
    if last_rewards is not None:  # none when a resumed run had no step left to train
        metrics.update({k: last_rewards[k] for k in REWARD_KEYS})
        trainer.save_metrics("train", metrics)  # train_results.json, now with the last logged rewards
        logger.info("Last training log: reward accuracy %.3f, margin %.4f",
                    metrics["rewards/accuracies"], metrics["rewards/margins"])
    # 5. 留出偏好对上的奖励准确率与间隔;LoRA 另存合并后的完整模型
    if held_out is not None:  # after training only: before it the policy is the reference, every reward is 0
        per_step = training_args.world_size * training_args.per_device_eval_batch_size
        repeated = -len(held_out) % per_step
        if repeated:  # TRL gathers rewards without dropping the pairs that pad the last batch
            logger.warning("Held-out rewards count %d pairs twice: %d pairs do not fill batches of %d x %d; "
                           "choose --per_device_eval_batch_size so that they do", repeated, len(held_out),
                           training_args.world_size, training_args.per_device_eval_batch_size)
        held_out_metrics = trainer.evaluate(held_out)
        trainer.log_metrics("eval", held_out_metrics)
        trainer.save_metrics("eval", held_out_metrics)
        trainer.save_state()  # trainer_state.json with this evaluation in its log_history
        logger.info("Held-out reward accuracy after DPO: %.3f (margin %.4f)",
                    held_out_metrics["eval_rewards/accuracies"], held_out_metrics["eval_rewards/margins"])
    if lora_args.use_lora and lora_args.merge_lora and trainer.is_world_process_zero():
        save_merged_model(trainer.model, tokenizer, training_args.output_dir)


if __name__ == "__main__":
    run_cli(main)
