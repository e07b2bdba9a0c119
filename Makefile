# The course's commands. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
STAMP := $(VENV)/.installed
TOY := artifacts/toy

.PHONY: setup toy run test test-fast test-notebooks test-browser chat check-exercises notebooks sync lab clean

setup: $(STAMP)  ## create .venv and install requirements.txt + llmtrain (editable)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@echo "Compiling DeepSpeed's CPU ops into $(VENV)/torch_extensions (once, ~2 minutes on 2 cores; nothing on a GPU box)"
	$(PY) -c "from llmtrain.training import build_cpu_deepspeed_ops; build_cpu_deepspeed_ops()" > $(VENV)/cpu_ops_build.log 2>&1 \
		|| { tail -20 $(VENV)/cpu_ops_build.log; exit 1; }
	touch $@

toy: $(TOY)/config.json  ## build the toy tokenizer + tiny Qwen2 config (artifacts/toy)

$(TOY)/config.json: $(STAMP) data/sample/pretrain.jsonl data/sample/pretrain_valid.jsonl data/sample/sft.jsonl data/sample/sft_valid.jsonl code/llmtrain/toy.py code/llmtrain/tokenizer.py code/llmtrain/modeling.py
	$(PY) -m llmtrain.toy --output_dir $(TOY)

# The scorecard of every stage (llmtrain.evaluation): eval questions seen in SFT vs held out, held-out
# perplexity and assistant loss, the share of replies that end with the sentence DPO teaches, and the
# held-out accuracy on 6.5's RL task (the same facts asked in words SFT never used).
SCORECARD := output/toy/scorecard.json
EVALUATE := $(PY) code/evaluate.py --eval_file data/sample/eval.jsonl --valid_text data/sample/pretrain_valid.jsonl \
	--valid_conversations data/sample/sft_valid.jsonl --style_suffix 还想知道什么,尽管问我。 \
	--rl_eval_file data/sample/grpo_eval.jsonl --scorecard $(SCORECARD)

run: toy  ## the whole toy pipeline (DeepSpeed, 2 CPU processes each): pretraining, full SFT, LoRA SFT, DPO, GRPO, scorecard
	rm -rf output/toy
	PRESET=toy bash code/pretrain.sh
	$(EVALUATE) --model output/toy/pretrain --name "base (6.1)"
	PRESET=toy bash code/finetune.sh
	$(EVALUATE) --model output/toy/sft --name "full SFT (6.2)"
	PRESET=toy USE_LORA=1 bash code/finetune.sh
	$(EVALUATE) --model output/toy/pretrain --adapter output/toy/sft-lora --name "LoRA SFT (6.3)"
	PRESET=toy bash code/dpo.sh
	$(EVALUATE) --model output/toy/sft --adapter output/toy/dpo-lora --name "LoRA DPO (6.4)"
	PRESET=toy EVAL_FILES= bash code/grpo.sh
	$(EVALUATE) --model output/toy/dpo-lora/merged --adapter output/toy/grpo-lora --name "LoRA GRPO (6.5)"
	@echo
	@echo "Full SFT vs LoRA SFT (r=8 on every linear layer, TOY_LORA_TARGETS) on the same toy base and data:"
	$(PY) code/compare_runs.py output/toy/sft output/toy/sft-lora
	@echo
	@echo "Scorecard ($(SCORECARD), every reply kept there):"
	@$(PY) -c "from llmtrain.evaluation import format_scorecard, read_scorecard; print(format_scorecard(read_scorecard('$(SCORECARD)')))"
	@echo
	@echo "Models (each folder: weights or adapter, loss.png, trainer_state.json):"
	@echo "  pretrained base:  output/toy/pretrain/"
	@echo "  full SFT:         output/toy/sft/"
	@echo "  LoRA SFT adapter: output/toy/sft-lora/  (merged plain model: output/toy/sft-lora/merged/)"
	@echo "  LoRA DPO adapter: output/toy/dpo-lora/  (merged plain model: output/toy/dpo-lora/merged/)"
	@echo "  LoRA GRPO adapter: output/toy/grpo-lora/ (merged plain model: output/toy/grpo-lora/merged/)"

# Notebook checks write their figures here, not into images/ (the committed ones).
NB_ENV := COURSE_IMAGES_DIR=$(abspath output/test-images)
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=600 notebooks

test: toy  ## every test: unit, scripts, and the notebooks (pair sync, papermill, nbval)
	$(NB_ENV) $(PY) -m pytest tests --durations=20 $(NBVAL)

test-fast: toy  ## everything but the slow tests (DeepSpeed launches, kill-and-resume, notebooks): the inner loop
	$(PY) -m pytest tests -m "not slow"

test-notebooks: toy  ## notebooks only: pairs in sync, papermill on toy parameters, nbval on the committed outputs
	$(NB_ENV) $(PY) -m pytest tests/test_notebooks.py $(NBVAL)

# Browser tests (tests/browser, never collected by `make test`): the chat page and every notebook in JupyterLab,
# driven through Debian's headless Chromium (apt-get install chromium chromium-driver). Screenshots go to
# output/test-images; COURSE_IMAGES_DIR=images updates the committed images/chat_page.png.
test-browser: toy  ## the chat page and every notebook in JupyterLab, in headless Chromium (make run's models)
	COURSE_IMAGES_DIR=$(abspath $(or $(COURSE_IMAGES_DIR),output/test-images)) $(PY) -m pytest tests/browser -v --durations=0

chat: toy  ## a local web page where every stage of make run answers the same question (ARGS="--stage DIR" for others)
	$(PY) code/chat_page.py $(ARGS)

check-exercises: toy  ## grade your exercises/ (EX=6.4: one notebook; SOLUTION=reference: grade llmtrain's own code)
	$(PY) -m exercises.check $(if $(EX),--notebook $(EX)) $(if $(SOLUTION),--solution $(SOLUTION))

sync: $(STAMP)  ## re-pair notebooks/*.ipynb and *.py after editing either side
	$(VENV)/bin/jupytext --sync notebooks/*.py

notebooks: toy sync  ## re-execute the notebooks in place: their outputs and the figures in images/ (to commit)
	COURSE_IMAGES_DIR=$(abspath images) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

lab: toy  ## JupyterLab on notebooks/, in this environment
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:  ## remove generated outputs (keeps .venv)
	rm -rf output artifacts .pytest_cache
