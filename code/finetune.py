"""6.2: supervised fine-tuning (SFT) of a pretrained causal LM with Trainer (+ DeepSpeed via `deepspeed`).

The chapter's finetune.py, modernised: ChatML rendering with loss only on assistant replies (ignore
id -100, not the pad id), no padding to 2048 (padding-free packing by default, `--packing false`
pads each batch to its longest sample), `--max_train_samples` instead of a hard-coded 10,000
lines, and the same resume, logging, tracker and error behaviour as code/pretrain.py.
`--use_lora` trains peft LoRA adapters instead (6.3.5); `--merge_lora` also writes a merged model.
`--use_qlora` loads the base in 4-bit NF4 (bitsandbytes) and trains LoRA adapters on it (QLoRA).

    python code/finetune.py --model_name_or_path output/toy/pretrain \
        --train_files data/sample/sft.jsonl --block_size 512 --output_dir output/try-sft --max_steps 20
"""

import logging
import sys

import torch
from transformers import TrainingArguments

from llmtrain.args import DataArguments, LoraArguments, ModelArguments, RunArguments, SFTArguments
from llmtrain.checkpoints import clear_or_resume_output_dir_then_seed
from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.launch import parse_flags_and_set_up_process
from llmtrain.lora import add_peft_lora, load_adapter, parameter_summary
from llmtrain.modeling import load_config, load_model, load_model_4bit, load_tokenizer, resolve_block_size
from llmtrain.sft_data import build_sft_dataset, load_sft_dataset, make_collator
from llmtrain.training import build_trainer, save_merged_model, split_for_eval, train_and_save

logger = logging.getLogger(__name__)


def main() -> None:
    # 1. 解析参数(6.1.5):SFT、LoRA 与 TrainingArguments 的参数;精度默认随机器,CPU 上的 DeepSpeed 先建 gloo 进程组
    model_args, data_args, sft_args, lora_args, run_args, training_args = parse_flags_and_set_up_process(
        (ModelArguments, DataArguments, SFTArguments, LoraArguments, RunArguments, TrainingArguments), sys.argv[1:])
    if not data_args.train_files:
        raise LlmtrainError("Pass --train_files with one or more JSON-lines files of {\"conversations\": ...} records.")
    if not model_args.model_name_or_path:
        raise LlmtrainError("SFT starts from a pretrained model: pass --model_name_or_path (a model folder).")
    config = load_config(model_args.model_name_or_path, model_args.trust_remote_code, "--model_name_or_path")
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               model_args.trust_remote_code)
    max_len = resolve_block_size(config, data_args.block_size, default=2048)

    # 2. SFT 数据(6.2.2):对话渲染成 ChatML,只有助手回答参与损失(其余标签为 -100);输入有错在这里就停下
    with training_args.main_process_first(desc="rendering conversations"):
        raw = load_sft_dataset(data_args.train_files, sft_args.max_train_samples)
        logger.info("Training files: %s (%d conversations)", data_args.train_files, len(raw))
        samples = build_sft_dataset(raw, tokenizer, max_len, data_args.preprocessing_num_workers,
                                    sft_args.system_message)
    train, validation = split_for_eval(samples, data_args.validation_split_percentage, training_args.seed)

    # 3. 断点:--overwrite_output_dir 时删掉旧 checkpoint,否则从最新的完整 checkpoint 继续;再设随机种子
    checkpoint = clear_or_resume_output_dir_then_seed(training_args, run_args.overwrite_output_dir)

    # 4. 加载预训练模型(6.2);--use_lora 时只训练注入的低秩矩阵(6.3.5);
    #    --use_qlora 时基座以 4-bit NF4 加载,只训练它上面的 LoRA(QLoRA)
    if lora_args.use_qlora:
        compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
        model = load_model_4bit(model_args.model_name_or_path, training_args.device, compute_dtype,
                                model_args.trust_remote_code)
    else:
        model = load_model(None, model_args.model_name_or_path, model_args.dtype, model_args.trust_remote_code)
    if lora_args.use_lora:
        model = add_peft_lora(model, lora_args.lora_target_modules.split(","), lora_args.lora_r,
                              lora_args.lora_alpha, lora_args.lora_dropout, training_args.activation_checkpointing)
    logger.info("%s", parameter_summary(model))

    # 5. 训练并保存:默认无 padding 打包;LoRA 另存合并后的完整模型
    logger.info("Batching: %s", "padding-free packing" if sft_args.packing else "padding to the longest sample")
    trainer = build_trainer(model, training_args, tokenizer, train, validation,
                            data_collator=make_collator(tokenizer, sft_args.packing), peak_tflops=run_args.peak_tflops)
    train_and_save(trainer, checkpoint)
    if lora_args.use_lora and lora_args.merge_lora and trainer.is_world_process_zero():
        merged = trainer.model
        if lora_args.use_qlora:  # merge into the full-precision base, not into its 4-bit copy
            base = load_model(None, model_args.model_name_or_path, model_args.dtype, model_args.trust_remote_code)
            merged = load_adapter(base, training_args.output_dir)
        save_merged_model(merged, tokenizer, training_args.output_dir)

if __name__ == "__main__":
    run_cli(main)
