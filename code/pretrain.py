"""6.1.5: pretrain a causal LM with Trainer (+ DeepSpeed when launched by `deepspeed`).

The chapter's script, modernised: same flags (plus every TrainingArguments flag), EOS between
documents, a shuffled map-style dataset, opt-in trackers, resume from the last complete
checkpoint, and clear errors for bad input. Run it through code/pretrain.sh, or directly:

    python code/pretrain.py --config_name artifacts/toy --tokenizer_name artifacts/toy \
        --train_files data/sample/pretrain.jsonl --block_size 128 --output_dir output/try --max_steps 20
"""

import logging
import sys

from transformers import TrainingArguments

from llmtrain.args import DataArguments, ModelArguments, RunArguments
from llmtrain.checkpoints import clear_or_resume_output_dir_then_seed
from llmtrain.errors import LlmtrainError, run_cli
from llmtrain.launch import parse_flags_and_set_up_process
from llmtrain.modeling import load_config, load_model, load_tokenizer, resolve_block_size
from llmtrain.pretrain_data import build_pretrain_dataset, load_text_dataset
from llmtrain.training import build_trainer, split_for_eval, train_and_save

logger = logging.getLogger(__name__)


def main() -> None:
    # 1. 解析参数(6.1.5):脚本自己的参数 + TrainingArguments 的全部参数;精度默认随机器(有 bf16 的 GPU 用 bf16,
    #    较老的 GPU 用 fp16,CPU 上 fp32),CPU 上的 DeepSpeed 先建 gloo 进程组
    model_args, data_args, run_args, training_args = parse_flags_and_set_up_process(
        (ModelArguments, DataArguments, RunArguments, TrainingArguments), sys.argv[1:])
    if not data_args.train_files:
        raise LlmtrainError("Pass --train_files with one or more JSON-lines files of {\"text\": ...} records.")
    model_source = model_args.config_name or model_args.model_name_or_path
    if not model_source:
        raise LlmtrainError("Pass --config_name (a config to build a fresh model from) or --model_name_or_path.")
    config = load_config(model_source, model_args.trust_remote_code,
                         "--config_name" if model_args.config_name else "--model_name_or_path")
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_source, model_args.trust_remote_code)
    block_size = resolve_block_size(config, data_args.block_size, default=1024)

    # 2. 预训练数据(6.1.3):读 JSON lines、分词并在每篇文档末尾加 EOS、拼接后切成等长的块;
    #    输入有错在这里就停下,输出目录还没动过
    with training_args.main_process_first(desc="tokenizing and grouping"):
        raw = load_text_dataset(data_args.train_files)
        logger.info("Training files: %s (%d documents, columns %s)", data_args.train_files, len(raw), raw.column_names)
        blocks = build_pretrain_dataset(raw, tokenizer, block_size, data_args.preprocessing_num_workers)
    train, validation = split_for_eval(blocks, data_args.validation_split_percentage, training_args.seed)

    # 3. 断点(6.1.5):--overwrite_output_dir 时删掉旧 checkpoint,否则从最新的完整 checkpoint 继续;再设随机种子
    checkpoint = clear_or_resume_output_dir_then_seed(training_args, run_args.overwrite_output_dir)

    # 4. 初始化模型(6.1.2):按配置从零建模(随机初始化用上面的种子),或加载预训练权重
    model = load_model(model_args.config_name, model_args.model_name_or_path, model_args.dtype,
                       model_args.trust_remote_code)

    # 5. 训练并保存(6.1.4):Trainer,DeepSpeed 由 --deepspeed 配置接管
    trainer = build_trainer(model, training_args, tokenizer, train, validation, peak_tflops=run_args.peak_tflops)
    train_and_save(trainer, checkpoint)

if __name__ == "__main__":
    run_cli(main)
