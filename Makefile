# Two commands for a fresh clone:  `make run` starts the bot, `make test` runs the tests.
# Both create .venv and install what is needed the first time (and again when pyproject.toml changes).
# torch and torchvision come as CPU builds from PyTorch's CPU wheel index when it answers within 5 s, in a step
# of their own (--index-url, --no-deps), else from the default index; everything else always comes from the
# default index (scripts/pip_install.py; TORCH_INDEX= skips the CPU index).
# devkit/ (synthetic checkpoints, stand-in servers) is in no wheel, so the editable install does not map it: a .pth
# file puts the clone's root on the path as well, for `phi3bot synthetic` (tests and benchmarks start from the root).

PYTHON ?= python3
VENV   ?= .venv
# pytest-xdist workers: tests wait on the model, timers and child processes, so two workers keep two cores busy.
WORKERS ?= 2
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install run test test-all lint bench-convert bench clean

$(STAMP): pyproject.toml scripts/pip_install.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/python scripts/pip_install.py --quiet -e ".[convert,serve,dev]"
	$(VENV)/bin/python -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "phi3bot-clone.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/phi3bot run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(WORKERS) --dist worksteal

# The slow tests (full-size model, soak) run one at a time, as their bounds were set.
test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-convert: $(STAMP)
	$(VENV)/bin/python benchmarks/convert_full.py

# Every benchmark in turn (about 2.5 hours on 2 cores; builds and converts the full synthetic model first).
BENCHMARKS := convert_full engine_latency long_conversation alternatives crops_cost cpu_options bandwidth_bound compute_bound \
	load_time batching gil_hold bot_overhead preprocessing_fidelity progress_estimates
bench: $(STAMP)
	set -e; for name in $(BENCHMARKS); do $(VENV)/bin/python benchmarks/$$name.py; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
