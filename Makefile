# The course's commands. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
STAMP := $(VENV)/.installed
TOY := artifacts/toy

.PHONY: setup toy run test test-notebooks sync lab clean

setup: $(STAMP)  ## create .venv and install requirements.txt + llmtrain (editable)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

toy: $(TOY)/config.json  ## build the toy tokenizer + tiny Qwen2 config (artifacts/toy)

$(TOY)/config.json: $(STAMP) data/sample/pretrain.jsonl code/llmtrain/toy.py code/llmtrain/tokenizer.py code/llmtrain/modeling.py
	$(PY) -m llmtrain.toy --output_dir $(TOY) --train_file data/sample/pretrain.jsonl

run: toy  ## the whole toy pipeline: pretraining with DeepSpeed (2 CPU processes)
	rm -rf output/toy
	PRESET=toy bash code/pretrain.sh
	@echo
	@echo "Toy pretraining done:"
	@echo "  model + tokenizer: output/toy/pretrain/"
	@echo "  loss plot:         output/toy/pretrain/loss.png"
	@echo "  logs and metrics:  output/toy/pretrain/trainer_state.json, train_results.json"

test: toy  ## every test
	$(PY) -m pytest tests

clean:  ## remove generated outputs (keeps .venv)
	rm -rf output artifacts .pytest_cache
