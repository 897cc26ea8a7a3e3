# pipacs: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench lint clean image image-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# the native journal and sd_notify through systemd-python where it builds (libsystemd-dev, pkg-config);
	# without it the appliance uses its plain-socket fallback
	-pkg-config --exists libsystemd 2>/dev/null && $(BIN)/python -m pip install --quiet -e '.[systemd]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pipacs serve $(if $(CONFIG),--config $(CONFIG))

# In parallel (pytest-xdist): a worker per core and one more, at most 4 (the tests spend much of
# their time waiting for servers, peers and mDNS: on 2 cores, 3 workers take a fifth less time
# than 2); tests marked xdist_group (Zeroconf on loopback, the Orthanc pair, Chromium) run one
# after the other on one worker. XDIST= runs serially.
WORKERS ?= $(shell n=$$(( $$(nproc) + 1 )); echo $$(( n > 4 ? 4 : n )))
XDIST ?= -n $(WORKERS) --dist loadgroup

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not image" $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not image" $(XDIST)

# The SD-card image (root; see README "The appliance image"). ARCH=arm64 (the Pi) or amd64 (the boot test's).
ARCH ?= arm64
image:
	image/build.sh $(ARCH)

# Build the amd64 image (and the arm64 one with ARCHES="amd64 arm64"), then boot each in qemu.
ARCHES ?= amd64
image-test: $(STAMP)
	for a in $(ARCHES); do COMPRESS=0 image/build.sh $$a || exit 1; done
	$(BIN)/python -m pytest -q -ra -s -m image tests/test_image.py

# ONLY=ingest|qr|web|access|zip|bundle|contexts|cases|soak|class|session runs one part (make's own options cannot carry --only;
# the class bench's own, e.g. --students 10 --no-shaped: python -m bench.classroom --help)
bench: $(STAMP)
	$(BIN)/python -m bench.run $(if $(ONLY),--only $(ONLY))

# ruff's default rules change between releases: this exact version (pyproject's required-version too)
LINT_RUFF := ruff==0.17.5
lint: $(STAMP)
	$(BIN)/python -m pip install --quiet '$(LINT_RUFF)'
	$(BIN)/ruff check appliance tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
