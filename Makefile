# exchange-service build. Every C file is picked up by directory:
#   common/*.c            -> $(BUILD)/libcommon.a
#   workers/ingest/*.c    -> exchange-ingest (main.c) + libingest.a (the rest)
#   workers/fanout/*.c    -> exchange-fanout (main.c) + libfanout.a (the rest)
#   supervisor/*.c        -> exchange-service (main.c) + libsupervisor.a
#   test/unit/test_*.c    -> one cmocka binary each, linked with every lib
SHELL := /bin/bash
BUILD ?= build
PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
SAN ?=

PKGS := libuv rdkafka jansson inih openssl zlib
# Asked of pkg-config when first used (inside a recipe), not when the Makefile
# is parsed: on a new machine `make test` parses this file before `deps` has
# installed the -dev packages, and `test`/`run` build in a sub-make after it.
PKG_CFLAGS = $(eval PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS)))$(PKG_CFLAGS)
PKG_LIBS = $(eval PKG_LIBS := $(shell pkg-config --libs $(PKGS)) -lwslay -lzookeeper_mt -lhttp_parser -lm -lpthread)$(PKG_LIBS)
CMOCKA_LIBS = $(eval CMOCKA_LIBS := $(shell pkg-config --libs cmocka))$(CMOCKA_LIBS)

CFLAGS ?= -O2 -g
ALL_CFLAGS = $(CFLAGS) -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -Icommon $(PKG_CFLAGS) $(SAN)
ALL_LDFLAGS = $(LDFLAGS) $(SAN)

COMMON_SRC := $(wildcard common/*.c)
INGEST_SRC := $(filter-out workers/ingest/main.c,$(wildcard workers/ingest/*.c))
FANOUT_SRC := $(filter-out workers/fanout/main.c,$(wildcard workers/fanout/*.c))
SUPER_SRC := $(filter-out supervisor/main.c,$(wildcard supervisor/*.c))
UNIT_SRC := $(wildcard test/unit/test_*.c)
UNIT_BIN := $(patsubst test/unit/%.c,$(BUILD)/test/%,$(UNIT_SRC))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIBCOMMON := $(BUILD)/libcommon.a
LIBINGEST := $(BUILD)/libingest.a
LIBFANOUT := $(BUILD)/libfanout.a
LIBSUPER := $(BUILD)/libsupervisor.a
ALL_LIBS := $(LIBSUPER) $(LIBINGEST) $(LIBFANOUT) $(LIBCOMMON)

BINS := $(BUILD)/exchange-service $(BUILD)/exchange-ingest $(BUILD)/exchange-fanout
FUZZ_SRC := $(wildcard test/fuzz/fuzz_*.c)
TOOL_SRC := $(wildcard test/tools/*.c)
TOOL_BIN := $(patsubst test/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRC))
BENCH_SRC := $(wildcard test/bench/*.c)
BENCH_BIN := $(patsubst test/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all bins deps run test unit integration lint install clean asan fuzz bench check-conf FORCE
all: $(BINS) $(UNIT_BIN) $(TOOL_BIN) $(BENCH_BIN)
# The three programs alone (what `make install` and the image need).
bins: $(BUILD)/exchange-service $(BUILD)/exchange-ingest $(BUILD)/exchange-fanout

# `exchange-service --version` and exchange_build_info: from git, "unknown"
# outside a checkout (the image build passes VERSION= and COMMIT= instead).
# Asked once, when first used; main.o is rebuilt when either changes.
VERSION ?= $(eval VERSION := $(or $(shell git describe --tags --always --dirty 2>/dev/null),unknown))$(VERSION)
COMMIT ?= $(eval COMMIT := $(or $(shell git rev-parse --short HEAD 2>/dev/null),unknown))$(COMMIT)
$(BUILD)/version.txt: FORCE
	@mkdir -p $(BUILD)
	@echo '$(VERSION) $(COMMIT)' | cmp -s - $@ || echo '$(VERSION) $(COMMIT)' > $@
$(BUILD)/obj/supervisor/main.o: $(BUILD)/version.txt
$(BUILD)/obj/supervisor/main.o: ALL_CFLAGS += -DEXCHANGE_VERSION='"$(VERSION)"' -DEXCHANGE_COMMIT='"$(COMMIT)"'

# ---- dependencies (Debian 12) ------------------------------------------
NPM_DIRS := $(patsubst %/package-lock.json,%,$(wildcard test/*/package-lock.json clients/js/package-lock.json))
DEB_PKGS := build-essential pkg-config libuv1-dev librdkafka-dev libzookeeper-mt-dev \
  libwslay-dev libjansson-dev libinih-dev libssl-dev zlib1g-dev libhttp-parser-dev libcmocka-dev \
  zookeeper default-jre-headless python3 python3-pytest python3-websockets python3-kazoo \
  python3-confluent-kafka nginx-light libnginx-mod-nchan prometheus clang libclang-rt-14-dev \
  openssl yamllint procps iproute2 ca-certificates clang-format cppcheck strace \
  docker-compose python3-jsonschema systemd chromium maven kcat stress-ng
# Apache Kafka's broker (test fixtures, make cluster, bench): jars from Maven
# Central, pinned in test/kafka/pom.xml, copied once into $(KAFKA_LIBS).
KAFKA_LIBS := $(abspath .deps/kafka/libs)
KAFKA_STAMP := $(KAFKA_LIBS)/.pom-$(shell cksum 2>/dev/null < test/kafka/pom.xml | cut -d' ' -f1)
export KAFKA_LIBS
deps:
	@missing=""; \
	for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	@for d in $(NPM_DIRS); do \
	  if [ ! -d $$d/node_modules ] || [ $$d/package-lock.json -nt $$d/node_modules ]; then \
	    echo "deps: npm ci in $$d"; npm ci --prefix $$d --no-audit --no-fund --loglevel=error && touch $$d/node_modules; \
	  fi; done
	@if [ ! -f $(KAFKA_STAMP) ]; then \
	  echo "deps: Apache Kafka broker jars (Maven Central) -> $(KAFKA_LIBS)"; \
	  rm -rf $(KAFKA_LIBS) && mvn -q -B -f test/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS) && touch $(KAFKA_STAMP); \
	else echo "deps: Kafka broker jars present"; fi

# ---- build --------------------------------------------------------------
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(LIBCOMMON): $(call obj,$(COMMON_SRC))
$(LIBINGEST): $(call obj,$(INGEST_SRC))
$(LIBFANOUT): $(call obj,$(FANOUT_SRC))
$(LIBSUPER): $(call obj,$(SUPER_SRC))
$(ALL_LIBS):
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^ $(if $^,,$(BUILD)/empty.o)

$(BUILD)/empty.o:
	@mkdir -p $(BUILD)
	echo 'typedef int empty_t;' | $(CC) -x c -c - -o $@
$(ALL_LIBS): | $(BUILD)/empty.o

# The fanout's demo page embeds the JavaScript client library (clients/js),
# compiled by its pinned tsc (`make deps` installs it) into one plain ESM file
# and turned into a C string: the page has no copy of the resume logic.
JS_CLIENT_SRC := clients/js/src/index.ts clients/js/tsconfig.json
JS_TSC := clients/js/node_modules/.bin/tsc
$(BUILD)/gen/clients-js/index.js: $(JS_CLIENT_SRC)
	@test -x $(JS_TSC) || { echo "$(JS_TSC) missing: run make deps (npm ci in clients/js)" >&2; exit 1; }
	$(JS_TSC) -p clients/js/tsconfig.json --outDir $(BUILD)/gen/clients-js
	@echo '{"type": "module"}' > $(BUILD)/gen/clients-js/package.json # ESM for Node 18 too (Debian 12)
	@touch $@
# A text file as the lines of a C string literal (\ and " escaped).
C_STRING = sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$$/\\n"/'
$(BUILD)/gen/exchange_client_js.h: $(BUILD)/gen/clients-js/index.js
	@{ echo '/* Generated from clients/js (tsc output) by the Makefile. */'; \
	  echo 'static const char exchange_client_js[] ='; $(C_STRING) $<; echo ';'; } > $@.tmp && mv $@.tmp $@
# The status and demo pages are real .html/.js files, embedded the same way:
# status_page.html becomes `const char status_page_html[]` in status_page_html.h
# (static for the demo page's, which only demo_page.c uses).
$(BUILD)/gen/status_page_html.h: supervisor/status_page.html
$(BUILD)/gen/demo_page_html.h: workers/fanout/demo_page.html
$(BUILD)/gen/demo_page_js.h: workers/fanout/demo_page.js
$(BUILD)/gen/demo_page_html.h $(BUILD)/gen/demo_page_js.h: EMBED_STORAGE := static
$(BUILD)/gen/status_page_html.h $(BUILD)/gen/demo_page_html.h $(BUILD)/gen/demo_page_js.h:
	@mkdir -p $(dir $@)
	@{ echo '/* Generated from $< by the Makefile. */'; \
	  echo '$(EMBED_STORAGE) const char $(subst .,_,$(notdir $<))[] ='; $(C_STRING) $<; echo ';'; } > $@.tmp && mv $@.tmp $@
$(call obj,workers/fanout/demo_page.c): $(BUILD)/gen/exchange_client_js.h $(BUILD)/gen/demo_page_html.h \
  $(BUILD)/gen/demo_page_js.h
$(call obj,workers/fanout/demo_page.c): ALL_CFLAGS += -I$(BUILD)/gen
$(call obj,supervisor/status_page.c): $(BUILD)/gen/status_page_html.h
$(call obj,supervisor/status_page.c): ALL_CFLAGS += -I$(BUILD)/gen

$(BUILD)/exchange-service: $(call obj,supervisor/main.c) $(LIBSUPER) $(LIBCOMMON)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)
$(BUILD)/exchange-ingest: $(call obj,workers/ingest/main.c) $(LIBINGEST) $(LIBCOMMON)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)
$(BUILD)/exchange-fanout: $(call obj,workers/fanout/main.c) $(LIBFANOUT) $(LIBCOMMON)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)
# Tests, tools and fuzz targets include module headers by name: "hub.h", not
# "../../workers/fanout/hub.h".
$(BUILD)/obj/test/%.o: ALL_CFLAGS += -Iworkers/fanout -Iworkers/ingest -Isupervisor
$(BUILD)/test/%: $(BUILD)/obj/test/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $< -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(PKG_LIBS) $(CMOCKA_LIBS)

$(BUILD)/tools/%: $(BUILD)/obj/test/tools/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $< -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(PKG_LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/test/bench/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $< -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(PKG_LIBS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---- run / test ---------------------------------------------------------
# `run` and `test` build in a sub-make: it reads pkg-config after deps ran.
run: deps
	$(MAKE) all
	test/sim/run-local.sh $(BUILD)

unit: all
	@fail=0; for t in $(UNIT_BIN); do echo "== $$t"; $$t || fail=1; done; exit $$fail

PYTEST := /usr/bin/python3 -m pytest -p no:cacheprovider
SOAK_SECONDS ?= 60
integration: all
	SOAK_SECONDS=$(SOAK_SECONDS) EXCHANGE_BUILD=$(abspath $(BUILD)) $(PYTEST) -q --durations=10 test/integration $(PYTEST_ARGS)

# The sanitizer pass: a separate build dir, unit + integration on that build.
ASAN_VARS := BUILD=build-asan CC=clang CFLAGS="-O1 -g" \
  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# Every sanitizer report from any process (supervisor, workers, tools) lands
# in build-asan/reports; the run fails if one appears, so a leak in a worker
# that the tests did not notice still fails `make test`.
ASAN_REPORTS := $(abspath build-asan)/reports
# The sanitizer pass skips what runs no C code of ours (the simulator's own
# tests, the harness self-test, offline deployment validation, the browser,
# make cluster's script: its C paths are test_election's and test_relay's).
ASAN_PYTEST_ARGS ?= --ignore=test/integration/test_sim.py --ignore=test/integration/test_harness.py \
  --ignore=test/integration/test_deploy.py --ignore=test/integration/test_pages.py \
  --ignore=test/integration/test_cluster.py
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:log_path=$(ASAN_REPORTS)/asan:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(ASAN_REPORTS)/ubsan
asan:
	$(MAKE) $(ASAN_VARS) all
	rm -rf $(ASAN_REPORTS) && mkdir -p $(ASAN_REPORTS)
	$(ASAN_ENV) $(MAKE) $(ASAN_VARS) unit
	$(ASAN_ENV) $(MAKE) $(ASAN_VARS) integration SOAK_SECONDS=30 PYTEST_ARGS="$(ASAN_PYTEST_ARGS)"
	@if ls $(ASAN_REPORTS)/* >/dev/null 2>&1; then \
	  echo "sanitizer reports:"; head -n 40 $(ASAN_REPORTS)/*; exit 1; \
	else echo "asan: no sanitizer reports"; fi

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) check-conf
	$(MAKE) integration
	$(MAKE) asan
	$(MAKE) fuzz-smoke

# conf/exchange.ini is generated from the key table; fail if it drifted.
check-conf: all
	@$(BUILD)/exchange-service --print-ini > $(BUILD)/exchange.ini.gen
	@diff -u conf/exchange.ini $(BUILD)/exchange.ini.gen && echo "conf/exchange.ini matches the key table"

lint:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --inline-suppr \
	  --suppress=missingIncludeSystem -Icommon common supervisor workers

install: bins
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/etc/exchange-service $(DESTDIR)/lib/systemd/system
	install -m 755 $(BUILD)/exchange-service $(BUILD)/exchange-ingest $(BUILD)/exchange-fanout $(DESTDIR)$(PREFIX)/bin/
	install -m 644 conf/*.ini $(DESTDIR)$(PREFIX)/etc/exchange-service/
	sed 's#@PREFIX@#$(PREFIX)#g' conf/exchange-service.service > $(DESTDIR)/lib/systemd/system/exchange-service.service

# ---- fuzzing (libFuzzer, test/fuzz/) ------------------------------------
# Everything is compiled in build-fuzz/ with coverage instrumentation and
# ASan+UBSan (fuzzer-no-link), each test/fuzz/fuzz_*.c linked with the
# libFuzzer driver. `make fuzz` runs every target FUZZ_SECONDS;
# `make fuzz-smoke` runs each FUZZ_SMOKE_SECONDS and fails on any crash or
# leak (seed corpora in test/fuzz/corpus/ double as regression inputs).
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 15
FUZZ_VARS := BUILD=build-fuzz CC=clang CFLAGS="-O1 -g" \
  SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
.PHONY: fuzz-build fuzz-smoke
$(BUILD)/fuzz/%: $(BUILD)/obj/test/fuzz/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(subst fuzzer-no-link,fuzzer,$(ALL_LDFLAGS)) -o $@ $< -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(PKG_LIBS)
fuzz-build:
	$(MAKE) $(FUZZ_VARS) $(patsubst test/fuzz/%.c,build-fuzz/fuzz/%,$(FUZZ_SRC))
fuzz: fuzz-build
	test/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)
fuzz-smoke: fuzz-build
	test/fuzz/run.sh build-fuzz $(FUZZ_SMOKE_SECONDS)

# Centrifugo (a peer in the bench): built from the Go module proxy, pinned,
# into .deps/centrifugo (ignored, never committed). A failed build leaves
# the peer n/a in the table.
CENTRIFUGO_VERSION := v6.9.1
CENTRIFUGO := $(abspath .deps/centrifugo/centrifugo)
$(CENTRIFUGO):
	@echo "deps: Centrifugo $(CENTRIFUGO_VERSION) (go install) -> $(dir $@)"
	@PATH="$$PATH:/usr/local/go/bin"; GOBIN=$(dir $@) GOFLAGS=-mod=mod \
	  go install github.com/centrifugal/centrifugo/v6@$(CENTRIFUGO_VERSION) \
	  || echo "deps: Centrifugo build failed; it is n/a in the bench" >&2

bench: deps
	$(MAKE) all
	-$(MAKE) $(CENTRIFUGO)
	CENTRIFUGO=$(CENTRIFUGO) test/bench/run.sh $(BUILD)

# compose/docker-compose.yml without Docker: ZooKeeper, Kafka, the simulator
# and two backends on this machine (test/cluster/cluster.py; Ctrl-C stops all).
.PHONY: cluster
cluster: deps
	$(MAKE) all
	EXCHANGE_BUILD=$(abspath $(BUILD)) /usr/bin/python3 test/cluster/cluster.py $(CLUSTER_ARGS)

clean:
	rm -rf build build-asan build-fuzz
