# The course's commands. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
STAMP := $(VENV)/.installed
OPS := $(VENV)/torch_extensions/.built
TOY := artifacts/toy

.PHONY: setup toy run test test-fast test-notebooks test-browser chat check-exercises notebooks sync lab clean benchmark

setup: $(OPS)  ## create .venv and install llmtrain (editable) with the notebook and test extras (pyproject.toml)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[notebooks,tests,eval,chat]'
	@# pip compiles the modules it installed one file at a time; compileall does the same on every core (half the
	@# time on 2). Like pip, it passes over a file written for a newer Python (torch has one): its status is ignored.
	$(PY) -m compileall -qq -j0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $@

# DeepSpeed's CPU ops, compiled once per environment (nothing on a GPU box, where DeepSpeed builds its CUDA ops).
$(OPS): $(STAMP)
	@echo "Compiling DeepSpeed's CPU ops into $(VENV)/torch_extensions (once, ~2 minutes on 2 cores)"
	$(PY) -c "from llmtrain.launch import build_cpu_deepspeed_ops; build_cpu_deepspeed_ops()" > $(VENV)/cpu_ops_build.log 2>&1 \
		|| { tail -20 $(VENV)/cpu_ops_build.log; exit 1; }
	mkdir -p $(dir $@) && touch $@

# The toy tokenizer and config are learned from the sample data only: editing library code rebuilds nothing.
toy: $(TOY)/config.json  ## build the toy tokenizer + tiny Qwen2 config (artifacts/toy)

$(TOY)/config.json: | $(OPS)
$(TOY)/config.json: data/sample/pretrain.jsonl data/sample/pretrain_valid.jsonl data/sample/sft.jsonl data/sample/sft_valid.jsonl
	$(PY) -m llmtrain.toy --output_dir $(TOY)

run: toy  ## retrain every toy stage into output/toy (DeepSpeed, 2 CPU processes each) and print the scorecard
	bash code/toy_pipeline.sh

# 7.1: lm-evaluation-harness (code/benchmark.py). By default the toy world both ways (4-way choice by
# log-likelihood, generation graded by the scorecard's rule) on make run's full SFT; on a GPU box, e.g.
#   make benchmark MODEL=autodl-tmp/output/sft ADAPTER=autodl-tmp/output/dpo-lora TASKS="ceval-valid cmmlu gsm8k"
MODEL ?= output/toy/sft
TASKS ?= toy_world_mc toy_world_gen
CHAT ?= 1
OUT ?= output/bench/lm_eval.json

benchmark: $(STAMP)  ## lm-eval on MODEL (+ ADAPTER): TASKS, CHAT=1 (chat template), LIMIT=n; JSON in OUT, table printed
	$(PY) code/benchmark.py --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --tasks $(TASKS) \
		$(if $(filter 1,$(CHAT)),--chat) $(if $(LIMIT),--limit $(LIMIT)) --output $(OUT)

# Notebook checks write their figures here, not into images/ (the committed ones).
NB_ENV := COURSE_IMAGES_DIR=$(abspath output/test-images)

test: toy  ## every test: unit, scripts (on one toy pipeline trained for the session), the notebooks (once each)
	$(NB_ENV) $(PY) -m pytest tests --durations=20

test-fast: toy  ## everything but the slow tests (training, launches, the session's pipeline, notebooks): the inner loop
	$(PY) -m pytest tests -m "not slow"

test-notebooks: toy  ## notebooks only: pairs in sync, each run once under papermill on toy parameters, outputs compared
	$(NB_ENV) $(PY) -m pytest tests/test_notebooks.py

# Browser tests (tests/browser, never collected by `make test`): the chat page and every notebook in JupyterLab,
# driven through Debian's headless Chromium (apt-get install chromium chromium-driver). Screenshots go to
# output/test-images; COURSE_IMAGES_DIR=images updates the committed images/chat_page.png.
test-browser: toy  ## the chat page and every notebook in JupyterLab, in headless Chromium (one toy pipeline trained for the session)
	COURSE_IMAGES_DIR=$(abspath $(or $(COURSE_IMAGES_DIR),output/test-images)) $(PY) -m pytest tests/browser -v --durations=0

chat: toy  ## a local web page where every stage of make run answers the same question (ARGS="--stage DIR" for others)
	$(PY) code/chat_page.py $(ARGS)

check-exercises: toy  ## grade your exercises/ (EX=6.4: one notebook; SOLUTION=reference: grade llmtrain's own code)
	$(PY) -m exercises.check $(if $(EX),--notebook $(EX)) $(if $(SOLUTION),--solution $(SOLUTION))

sync: $(STAMP)  ## re-pair notebooks/*.ipynb and *.py after editing either side
	$(VENV)/bin/jupytext --sync notebooks/*.py

notebooks: toy sync  ## re-execute the notebooks in place on make run's models: outputs and images/ (to commit)
	COURSE_IMAGES_DIR=$(abspath images) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

lab: toy  ## JupyterLab on notebooks/, in this environment
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:  ## remove generated outputs (keeps .venv)
	rm -rf output artifacts .pytest_cache
