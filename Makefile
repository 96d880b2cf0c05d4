# atrest: one binary, three modules (agent -> coord -> crypto), tests beside them.
#
#   make            build ./atrest (release flags, -Werror)
#   make deps       install every build and test dependency (Debian 12, apt-get, idempotent)
#   make check      deps + unit tests (normal and ASan+UBSan) + short fuzz runs + integration tests
#   make bench      benchmarks, one BENCH line per figure
#   make fuzz       longer libFuzzer runs (FUZZ_SECONDS each)
#   make demo       etcd, three API-server simulators and three agents: a key rotation, live
#   make demo-basic a local etcd and one agent on loopback, step by step
#   make install    DESTDIR and PREFIX honoured

PREFIX   ?= /usr/local
DESTDIR  ?=
CC       ?= cc
CLANG    ?= clang
PYTHON   ?= /usr/bin/python3
VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
FUZZ_SECONDS ?= 60
FUZZ_CHECK_SECONDS ?= 5
# integration tests run this many at a time (pytest-xdist): most of their time is waiting
TEST_JOBS ?= 4
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

PKGS     := libuv yaml-0.1 libcrypto libsodium libcurl jansson libmicrohttpd libsystemd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-unused-parameter
BASEFLAGS := -std=c11 -D_GNU_SOURCE -DATREST_VERSION='"$(VERSION)"' -I. $(WARN) $(PKG_CFLAGS) -MMD -MP
REL_CFLAGS  := -O2 -g -D_FORTIFY_SOURCE=3 -fstack-protector-strong -fstack-clash-protection \
               -fcf-protection -fPIE
REL_LDFLAGS := -pie -Wl,-z,relro,-z,now
SAN_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined -DATREST_SANITIZE=1
SAN_LDFLAGS := -fsanitize=address,undefined
LIBS     := $(PKG_LIBS) -lm -lpthread

# Sources: every .c of a module is part of the library; agent/main.c holds main().
LIB_SRC  := $(sort $(wildcard crypto/*.c coord/*.c coord/etcd/*.c agent/*.c))
LIB_SRC  := $(filter-out agent/main.c,$(LIB_SRC))
SUP_SRC  := $(sort $(wildcard tests/support/*.c))
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))
BENCH_SRC := $(sort $(wildcard bench/bench_*.c))

REL := build/rel
SAN := build/asan
FZ  := build/fuzz

REL_LIB_OBJ := $(LIB_SRC:%.c=$(REL)/%.o)
SAN_LIB_OBJ := $(LIB_SRC:%.c=$(SAN)/%.o)
REL_SUP_OBJ := $(SUP_SRC:%.c=$(REL)/%.o)
SAN_SUP_OBJ := $(SUP_SRC:%.c=$(SAN)/%.o)
REL_UNIT := $(UNIT_SRC:tests/unit/%.c=$(REL)/tests/%)
SAN_UNIT := $(UNIT_SRC:tests/unit/%.c=$(SAN)/tests/%)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=$(FZ)/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(REL)/bench/%)

.PHONY: all deps check check-build check-inner check-long style arrows unit-security unit unit-rel unit-asan fuzz fuzz-check fuzz-build bench \
        demo demo-basic integration install clean format lint-style bench-reencrypt chaos chaos-short
.DEFAULT_GOAL := all
.SECONDARY:

all: atrest

atrest: $(REL)/agent/main.o $(REL)/libatrest.a
	$(CC) $(REL_LDFLAGS) -o $@ $^ $(LIBS)

$(REL)/libatrest.a: $(REL_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(SAN)/libatrest.a: $(SAN_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(REL)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(REL_CFLAGS) -c -o $@ $<
$(SAN)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(SAN_CFLAGS) -c -o $@ $<

# Unit tests may #include a module's .c to reach its static functions; they link the library
# minus nothing (the linker takes the first definition from the test object).
$(REL)/tests/%: tests/unit/%.c $(REL_SUP_OBJ) $(REL)/libatrest.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(REL_CFLAGS) $(REL_LDFLAGS) -o $@ $< $(REL_SUP_OBJ) $(REL)/libatrest.a -lcmocka $(LIBS)
$(SAN)/tests/%: tests/unit/%.c $(SAN_SUP_OBJ) $(SAN)/libatrest.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(SAN_CFLAGS) $(SAN_LDFLAGS) -o $@ $< $(SAN_SUP_OBJ) $(SAN)/libatrest.a -lcmocka $(LIBS)
$(SAN)/atrest: $(SAN)/agent/main.o $(SAN)/libatrest.a
	$(CC) $(SAN_LDFLAGS) -o $@ $^ $(LIBS)

$(REL)/bench/%: bench/%.c $(REL_SUP_OBJ) $(REL)/libatrest.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(REL_CFLAGS) $(REL_LDFLAGS) -o $@ $< $(REL_SUP_OBJ) $(REL)/libatrest.a $(LIBS)

# libFuzzer: the module sources are compiled once with clang (instrumented, no fuzzer main)
# and linked into each target.
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -DATREST_VERSION='"$(VERSION)"' -DATREST_FUZZ=1 -I. -g -O1 \
              -fsanitize=address,undefined -fno-sanitize-recover=undefined $(PKG_CFLAGS) \
              -Wno-unused-command-line-argument
FZ_LIB_OBJ := $(LIB_SRC:%.c=$(FZ)/obj/%.o)
$(FZ)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<
$(FZ)/%: fuzz/%.c $(FZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(FZ_LIB_OBJ) $(LIBS)

# ---------------------------------------------------------------------------------------------
deps:
	@sh tests/deps.sh

check: deps
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) check-build
	@$(MAKE) --no-print-directory check-inner

# everything make check runs, built first and in parallel (the tests then run in order)
check-build: atrest $(SAN)/atrest $(REL_UNIT) $(SAN_UNIT) $(FUZZ_BIN)

check-inner: style arrows atrest $(SAN)/atrest unit unit-security fuzz-check integration model chaos-short

# Mechanical style: every C file as .clang-format says (fix with `make format`).
style:
	@clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h' 2>/dev/null || ls */*.c */*.h) && echo "style: clang-format clean"

# Module arrows (agent -> coord -> crypto, coord -> coord/etcd) on every #include, and the
# check's own self-test on planted bad includes.
arrows:
	@sh tests/check-arrows.sh && sh tests/check-arrows.sh --self-test

# The rotation protocol's Promela model: an exhaustive spin check of S1, S2, S7, S8, and each
# mutation caught (docs/MODEL.md).
.PHONY: model
model:
	@sh tests/model/run.sh

unit-security:
	@sh tests/test_unit_security.sh 2.0

unit: unit-rel unit-asan

unit-rel: $(REL_UNIT)
	@sh tests/run-unit.sh $(REL_UNIT)

unit-asan: $(SAN_UNIT)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  sh tests/run-unit.sh $(SAN_UNIT)

fuzz-build: $(FUZZ_BIN)

fuzz-check: fuzz-build
	@sh tests/run-fuzz.sh $(FUZZ_CHECK_SECONDS) $(FUZZ_BIN)

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@sh tests/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

integration: atrest $(SAN)/atrest
	@if ls tests/integration/test_*.py >/dev/null 2>&1; then \
	  ATREST=$(CURDIR)/atrest ATREST_ASAN=$(CURDIR)/$(SAN)/atrest $(PYTHON) -m pytest -q -p no:cacheprovider \
	    -n $(TEST_JOBS) --durations=15 tests/integration; \
	else echo "integration: no tests yet"; fi

# The chaos run of issue 10 (tests/chaos/chaos.py, no pytest: its last line is the CHAOS
# line): a 3-member etcd, three simulated API servers and three agents under random faults
# while keys rotate. CHAOS_SECONDS (600; chaos-short: 120), CHAOS_SEED to replay a run.
CHAOS_SECONDS ?= 600

chaos: atrest
	@ATREST=$(CURDIR)/atrest CHAOS_SECONDS=$(CHAOS_SECONDS) $(PYTHON) tests/chaos/chaos.py

chaos-short: atrest
	@ATREST=$(CURDIR)/atrest CHAOS_SECONDS=120 $(PYTHON) tests/chaos/chaos.py

# The long runs: every integration test with both builds (ATREST_LONG=1 adds the ASan
# build of the hostile-peer tests) and the 10-minute chaos run.
check-long: deps
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) check-build
	@ATREST_LONG=1 $(MAKE) --no-print-directory integration chaos

bench: deps
	@$(MAKE) --no-print-directory atrest $(BENCH_BIN)
	@ATREST=$(CURDIR)/atrest sh bench/run.sh $(BENCH_BIN) bench/bench_reencrypt_api.py

# The re-encrypt pass and the verify scan against a plain loader and a plain range read
# (N objects, default 100000: N=1000000 ROUNDS=1 make bench-reencrypt), then the API-mode pass through
# the simulator for reference (API_N objects, default 2000: bench/bench_reencrypt_api.py).
bench-reencrypt: atrest $(REL)/bench/bench_reencrypt
	@ATREST=$(CURDIR)/atrest sh bench/run.sh $(REL)/bench/bench_reencrypt bench/bench_reencrypt_api.py

# make demo: the three-node rotation (tests/demo_rotation.py; DEMO_OBJECTS=10000 by default);
# make demo-basic: one agent and etcd, step by step (tests/demo.sh).
demo: deps
	@$(MAKE) --no-print-directory atrest
	@ATREST=$(CURDIR)/atrest $(PYTHON) tests/demo_rotation.py

demo-basic: deps
	@$(MAKE) --no-print-directory atrest
	@sh tests/demo.sh

install: atrest
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/lib/systemd/system $(DESTDIR)/usr/lib/sysusers.d \
	  $(DESTDIR)/usr/lib/tmpfiles.d $(DESTDIR)/etc/atrest
	install -m 0755 atrest $(DESTDIR)$(PREFIX)/bin/atrest
	sed 's|@BINDIR@|$(PREFIX)/bin|g' systemd/atrest.service > $(DESTDIR)/lib/systemd/system/atrest.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/atrest.service
	install -m 0644 systemd/atrest.sysusers $(DESTDIR)/usr/lib/sysusers.d/atrest.conf
	install -m 0644 systemd/atrest.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/atrest.conf
	test -e $(DESTDIR)/etc/atrest/agent.yaml || install -m 0600 systemd/agent.yaml.example $(DESTDIR)/etc/atrest/agent.yaml

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build atrest

-include $(REL_LIB_OBJ:.o=.d) $(SAN_LIB_OBJ:.o=.d) $(FZ_LIB_OBJ:.o=.d) $(REL)/agent/main.d $(SAN)/agent/main.d
