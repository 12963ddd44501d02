# Developer entry points. A fresh Debian 12 machine needs only: make run   (or: make test)
.PHONY: setup run test clean

VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Seconds the demo runs; 0 runs until Ctrl-C.
DURATION ?= 20

setup:
	@MIRAGE_VENV=$(abspath $(VENV)) bash tools/setup.sh

run: setup
	$(PYTHON) -m mirage_ros.ros.run --duration $(DURATION) --output demo_output

test: setup
	$(PYTHON) -m pytest

clean:
	rm -rf build demo_output .pytest_cache
