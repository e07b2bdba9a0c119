# The course's commands. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
STAMP := $(VENV)/.installed
TOY := artifacts/toy

.PHONY: setup toy run test test-notebooks notebooks sync lab clean

setup: $(STAMP)  ## create .venv and install requirements.txt + llmtrain (editable)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

toy: $(TOY)/config.json  ## build the toy tokenizer + tiny Qwen2 config (artifacts/toy)

$(TOY)/config.json: $(STAMP) data/sample/pretrain.jsonl code/llmtrain/toy.py code/llmtrain/tokenizer.py code/llmtrain/modeling.py
	$(PY) -m llmtrain.toy --output_dir $(TOY) --train_file data/sample/pretrain.jsonl

run: toy  ## the whole toy pipeline: pretraining, full SFT, LoRA SFT (DeepSpeed, 2 CPU processes each), a chat
	rm -rf output/toy
	PRESET=toy bash code/pretrain.sh
	PRESET=toy bash code/finetune.sh
	PRESET=toy USE_LORA=1 bash code/finetune.sh
	@echo
	$(PY) code/chat.py --model output/toy/sft "3加5等于几?" "“快”的反义词是什么?" "星期三的后一天是星期几?" "你好"
	@echo "Full SFT vs LoRA SFT (q_proj,v_proj, r=8) on the same toy model and data:"
	$(PY) code/compare_runs.py output/toy/sft output/toy/sft-lora
	@echo
	@echo "Toy pipeline done (each folder: model or adapter, loss.png, trainer_state.json):"
	@echo "  pretrained model: output/toy/pretrain/"
	@echo "  full SFT model:   output/toy/sft/"
	@echo "  LoRA adapter:     output/toy/sft-lora/  (merged plain model: output/toy/sft-lora/merged/)"

# Notebook checks write their figures here, not into images/ (the committed ones).
NB_ENV := COURSE_IMAGES_DIR=$(abspath output/test-images)
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=600 notebooks

test: toy  ## every test: unit, scripts, and the notebooks (pair sync, papermill, nbval)
	$(NB_ENV) $(PY) -m pytest tests $(NBVAL)

test-notebooks: toy  ## notebooks only: pairs in sync, papermill on toy parameters, nbval on the committed outputs
	$(NB_ENV) $(PY) -m pytest tests/test_notebooks.py $(NBVAL)

sync: $(STAMP)  ## re-pair notebooks/*.ipynb and *.py after editing either side
	$(VENV)/bin/jupytext --sync notebooks/*.py

notebooks: toy sync  ## re-execute the notebooks in place (outputs and images/ to commit)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

lab: toy  ## JupyterLab on notebooks/, in this environment
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:  ## remove generated outputs (keeps .venv)
	rm -rf output artifacts .pytest_cache
