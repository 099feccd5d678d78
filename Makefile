# The two commands of the README: `make demo` (the embedded default, end to end) and `make test`.
# Both create .venv/ when it is missing. Knobs: PYTHON, DEMO_GROUPS, DEMO_MINUTES, DATA, RUN.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= data/demo
RUN ?= runs/nano
DEMO_GROUPS ?= 4000  # distinct sources are what the student generalises from (README, issue 16): ~6 min, 3.1 GB
DEMO_MINUTES ?= 30

.PHONY: install demo test test-slow bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from its pinned build (a plain `pip install timm` would pull a different CUDA torch).
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

# Rerunnable: synth and label resume, and distill resumes the run in $(RUN) (a finished one: nothing left to
# train, re-export and re-evaluate), starting over only when there is no checkpoint to resume.
demo: install
	$(BIN)/spatialreward synth --out $(DATA) --groups $(DEMO_GROUPS) --seed 0 --workers 2
	$(BIN)/spatialreward label --teacher oracle --data $(DATA)
	$(BIN)/spatialreward inspect --data $(DATA) --split heldout --index 0 --out $(DATA)/contact_sheet.png
	$(BIN)/spatialreward distill --preset nano --data $(DATA) --out $(RUN) --max-minutes $(DEMO_MINUTES) \
	    --eval-every-minutes 0 --max-eval-groups 200 --resume --overwrite
	$(BIN)/spatialreward eval --model $(RUN) --data $(DATA) --split heldout

test: install
	$(BIN)/python -m pytest -q

# The long checks kept out of `make test` (@pytest.mark.slow: full-size export checks, the serving benchmarks'
# smoke runs, a local Ray Serve replica): minutes on a CPU. `-m slow` here overrides pyproject's `-m 'not slow'`.
test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/student_latency.py

# On a GPU machine (its own python3 with torch + triton): GPU tests, kernel check, every GPU benchmark, bounded.
bench-gpu:
	bash bench/gpu_session.sh

clean:
	rm -rf $(VENV) data runs .pytest_cache
