# The two set-up commands of README.md: `make demo` and `make test`. Both install first.
PYTHON ?= python3
# Tests run in a loopback-only network namespace so no connection can leave the machine.
ISOLATE ?= unshare -rn sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: install test demo

install:
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	$(ISOLATE) $(PYTHON) -m pytest -q

demo: install
	$(PYTHON) -m miga_ray.cli demo --config configs/demo.yaml --out out/demo
