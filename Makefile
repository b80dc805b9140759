# The two set-up commands of README.md: `make demo` and `make test`. Both install first.
PYTHON ?= python3
# Tests run in a loopback-only network namespace so no connection can leave the machine, one
# BLAS thread per process (the suite runs renders, Ray workers and servers side by side).
ISOLATE ?= unshare -rn sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: install browser test demo

install:
	$(PYTHON) -m pip install -q -e ".[test]"

# The gallery test drives Debian's Chromium (headless, through playwright; no browser download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "the gallery test needs Chromium at /usr/bin/chromium (Debian: apt-get install chromium)"; fi; \
	fi

# Two pytest workers, tests handed out as workers free up: most tests hold one core (renders run on one
# BLAS thread), so two share a 2-core machine; every test keeps its servers, Ray temp dirs and ports apart.
PYTEST_WORKERS ?= 2

test: install browser
	OMP_NUM_THREADS=1 $(ISOLATE) $(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=15

# The demo renders its prompts side by side with torch threads chosen for the machine's idle CPUs
# (render.cpu_threads); a user's OMP_NUM_THREADS wins.
demo: install
	$(PYTHON) -m miga_ray.cli demo --config configs/demo.yaml --out out/demo
