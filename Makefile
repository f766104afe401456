# Two commands on a fresh Debian/Ubuntu machine:  make demo  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test data install clean bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The embedded dataset: Debian's package when apt is usable, else torchvision's download into the cache.
data: install
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then \
	     echo "Fashion-MNIST installed with apt"; \
	else $(PY) -c "from unlearnable.data import load; load('fashion-mnist')" && echo "Fashion-MNIST in the cache"; fi

demo: data
	$(VENV)/bin/unlearnable demo

# Two one-thread workers (tests/conftest.py); tests that share a costly fixture run on one worker (xdist_group).
test: data
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: data
	$(PY) benchmarks/bench_trainer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
