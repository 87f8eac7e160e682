# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DATA ?= demo_data
DEMO_RUN  ?= demo_run

.PHONY: demo test install clean-demo

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(BIN)/python -m grdnet_tf.bin.demo --data_dir=$(DEMO_DATA) --model_dir=$(DEMO_RUN)

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)

# Benchmarks (bench/README.md, docs/benchmarks.md): each waits up to BENCH_WAIT seconds for a
# load average below 1.5, prints its JSON result last and writes bench/results/<name>.json.
BENCH_WAIT ?= 900

.PHONY: bench

bench: $(STAMP)
	$(BIN)/python bench/flops.py
	$(BIN)/python bench/ceiling.py --wait_for_load=$(BENCH_WAIT)
	$(BIN)/python bench/train_step.py --wait_for_load=$(BENCH_WAIT)
	$(BIN)/python bench/serving.py --wait_for_load=$(BENCH_WAIT)
	$(BIN)/python bench/pipeline.py
