# xskproxy — the two commands of the README (`make demo`, `make test`) and what they stand on.
# Every target bootstraps first: on a fresh Debian 12 machine (as root) it installs what is missing.
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: bootstrap build native pyxdp test test-unit test-native test-kube test-e2e demo bench bench-quick clean

bootstrap:
	bash scripts/bootstrap.sh

# The BPF program and C tools (CMake), then the cffi extension pyxdp and the packages (setup.py).
build: bootstrap native pyxdp

native:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build -j2

pyxdp:
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# The whole suite. Root-only layers skip themselves (with a reason) when not run as root.
test: build
	$(PYTEST) -q tests bench/test_quick.py

test-unit: build
	$(PYTEST) -q tests/unit

test-native: build
	$(PYTEST) -q tests/native

test-kube: build
	$(PYTEST) -q tests/kube

test-e2e: build
	$(PYTEST) -q tests/e2e

demo: build
	.venv/bin/xskproxy demo

bench: build
	$(PYTEST) -q bench --benchmark-json=bench/results/pytest-benchmark.json

clean:
	rm -rf build *.egg-info native/_pyxdp_gen* pyxdp*.so

# The container image (deploy/Containerfile) from the committed tree, without a registry:
# debootstrap bases, wheels from the configured index, numba's cache warmed at build. IMAGE=...
.PHONY: image image-smoke
IMAGE ?= xskproxy:dev
image: bootstrap
	bash scripts/build_image.sh $(IMAGE)

# That image's agents in the e2e lab, as the DaemonSet runs them (tests/e2e/test_container_smoke.py)
image-smoke:
	XSKPROXY_IMAGE=$(IMAGE) $(PYTEST) -q -s -p no:cacheprovider tests/e2e/test_container_smoke.py
