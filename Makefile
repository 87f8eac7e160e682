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
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m grdnet_tf.bin.demo --data_dir=$(DEMO_DATA) --model_dir=$(DEMO_RUN)

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
