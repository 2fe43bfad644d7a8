# shoal: the two commands.
#   make demo   set up everything, install shoal, run the live demo
#   make test   set up everything, build, run every C++ and Python test
# Everything the build needs is installed from here (apt-get for Debian
# packages, pip into .venv for Python packages): nothing by hand.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
BUILD  ?= build/dev
JOBS   ?= $(shell nproc)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all demo test test-cpp test-python build sanitize-asan sanitize-tsan thread-safety clang-deps bench bench-deps install clean system-deps

all: build

# The observability tests drive real programs: `shoal top` under tmux, the
# dashboard in headless Chromium (chromium-driver), /metrics scraped by a real
# Prometheus server.
system-deps:
	@if [ ! -f /usr/include/gtest/gtest.h ] || ! command -v cmake >/dev/null || ! command -v g++ >/dev/null \
	    || ! command -v tmux >/dev/null || ! command -v chromedriver >/dev/null || ! command -v prometheus >/dev/null; then \
	  echo "installing Debian packages: libgtest-dev cmake g++ tmux chromium chromium-driver prometheus"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends \
	    libgtest-dev cmake g++ tmux chromium chromium-driver prometheus >/dev/null; \
	fi

clang-deps:
	@if ! command -v clang++ >/dev/null; then \
	  echo "installing Debian package: clang"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq clang >/dev/null; \
	fi

$(VENV)/.stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

$(BUILD)/build.ninja: CMakeLists.txt $(VENV)/.stamp | system-deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) $(CMAKE_ARGS)

build: system-deps $(VENV)/.stamp $(BUILD)/build.ninja
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build $(BUILD) -j $(JOBS)

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j 1

test-python: build
	PYTHONPATH=$(BUILD)/pkg $(VPY) -m pytest -q -p no:cacheprovider --durations=15 tests

test: test-cpp test-python

# The C++ tests again under the sanitizers, each in its own build directory.
sanitize-asan: system-deps $(VENV)/.stamp
	$(MAKE) test-cpp BUILD=build/asan CMAKE_ARGS="-DSHOAL_PYTHON=OFF -DSHOAL_BENCH=OFF -DSHOAL_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo"
sanitize-tsan: system-deps $(VENV)/.stamp
	$(MAKE) test-cpp BUILD=build/tsan CMAKE_ARGS="-DSHOAL_PYTHON=OFF -DSHOAL_BENCH=OFF -DSHOAL_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo"

# Clang's thread-safety analysis over the C++ engine: every field annotated
# SHOAL_GUARDED_BY touched without its lock, every *_locked function called
# without it, fails the build (shoal/base/thread_annotations.hpp). The C++
# library, its tests and the test worker are built; nothing is run.
thread-safety: system-deps clang-deps
	cmake -S . -B build/clang -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
	  -DSHOAL_PYTHON=OFF -DSHOAL_BENCH=OFF -DCMAKE_CXX_FLAGS="-Wthread-safety -Werror"
	cmake --build build/clang -j $(JOBS)

install: system-deps $(VENV)/.stamp
	$(VPY) -m pip install -q --no-build-isolation .

demo: install
	$(VPY) -m shoal demo

# Benchmarks against the peers (installed here as optional dependencies, never
# needed by shoal itself). Results: docs/benchmarks.md, docs/img/, bench/results/.
$(VENV)/.bench-stamp: bench/requirements.txt $(VENV)/.stamp
	$(VPY) -m pip install -q -r bench/requirements.txt
	touch $@

bench-deps: $(VENV)/.bench-stamp

bench: build bench-deps
	./$(BUILD)/cpp/bench/ipc_bench
	PYTHONPATH=$(BUILD)/pkg:. $(VPY) -m bench.ipc
	PYTHONPATH=$(BUILD)/pkg:. $(VPY) -m bench.chaos
	PYTHONPATH=$(BUILD)/pkg:. $(VPY) -m bench.data
	PYTHONPATH=$(BUILD)/pkg:. $(VPY) -m bench

clean:
	rm -rf build
