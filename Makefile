# Engram build. `make` builds libraries and programs, `make test` runs every
# test program, `make asan` the same under AddressSanitizer+UBSan,
# `make bench` the benchmarks, `make run` the service.
CC      ?= cc
OPT     ?= -O2 -g
WARN    := -std=c11 -Wall -Wextra -Werror
INC     := -Imemory -Iindex -Iengine -Inet -Itests -Itools/gen
CFLAGS  += $(WARN) $(OPT) -D_GNU_SOURCE -pthread $(INC) $(EXTRA_CFLAGS)
LDLIBS  := -llmdb -levent -levent_pthreads -lopenblas -lxxhash -lm -pthread
B       ?= build

.DEFAULT_GOAL := all
MODULES := memory index engine net
# A module's library holds every .c in its folder; empty modules are skipped.
define module_rules
$(1)_SRC := $$(wildcard $(1)/*.c)
$(1)_OBJ := $$(patsubst %.c,$(B)/%.o,$$($(1)_SRC))
ifneq ($$($(1)_SRC),)
LIBS += $(B)/lib/libeg_$(1).a
$(B)/lib/libeg_$(1).a: $$($(1)_OBJ)
	@mkdir -p $$(dir $$@)
	$$(AR) rcs $$@ $$^
endif
endef
$(foreach m,$(MODULES),$(eval $(call module_rules,$(m))))
# Link order: dependents first.
LINKLIBS := $(filter %net.a,$(LIBS)) $(filter %engine.a,$(LIBS)) \
            $(filter %index.a,$(LIBS)) $(filter %memory.a,$(LIBS))

# tools/gen: the seeded workload generator and capture reader, shared by
# the tests and the benchmarks.
GEN_SRC    := $(wildcard tools/gen/*.c)
GEN_LIB    := $(B)/lib/libwl_gen.a
$(GEN_LIB): $(patsubst %.c,$(B)/%.o,$(GEN_SRC))
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRC))
TEST_UTIL  := $(B)/tests/testutil.o
BENCH_SRC  := $(wildcard tools/bench/*.c)
BENCH_OBJ  := $(patsubst %.c,$(B)/%.o,$(BENCH_SRC))
PROG_SRC   := $(wildcard tools/*.c)
PROG_BIN   := $(patsubst tools/%.c,$(B)/bin/%,$(PROG_SRC))

.PHONY: all deps test asan tsan bench run clean fuzz
all: deps $(LIBS) $(PROG_BIN) $(TEST_BIN)

deps:
	@sh mk/deps.sh

# -MMD: each object depends on the headers it includes, nothing more.
# deps is order-only: under -j it runs (once) before any compile, so a
# fresh machine's parallel build never compiles before lmdb.h is installed.
$(B)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@
-include $(shell find $(B) -name '*.d' 2>/dev/null)

$(B)/tests/%: $(B)/tests/%.o $(TEST_UTIL) $(LIBS) $(GEN_LIB)
	$(CC) $(CFLAGS) $< $(TEST_UTIL) -o $@ $(GEN_LIB) $(LINKLIBS) $(LDLIBS)

$(B)/bin/engram-bench: $(B)/tools/engram-bench.o $(BENCH_OBJ) $(LIBS) $(GEN_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.o,$^) -o $@ $(GEN_LIB) $(LINKLIBS) $(LDLIBS)

$(B)/bin/engram: $(B)/tools/engram.o $(LIBS) $(GEN_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(GEN_LIB) $(LINKLIBS) $(LDLIBS)

$(B)/bin/%: $(B)/tools/%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LINKLIBS) $(LDLIBS)

.SECONDARY:

test: all
	@sh tests/run.sh $(B)/tests

asan:
	@sh mk/deps.sh
	$(MAKE) B=build-asan OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    EG_TEST_SCALE=asan sh tests/run.sh build-asan/tests

# ThreadSanitizer (clang: gcc's target_clones resolvers run before its
# runtime starts). OpenBLAS is uninstrumented: one thread, so that its own
# workers' writes are not reported as races.
tsan:
	@sh mk/deps.sh
	@command -v clang >/dev/null || { echo "make tsan needs clang (apt-get install clang)"; exit 1; }
	$(MAKE) CC=clang B=build-tsan OPT="-O1 -g -fsanitize=thread" all
	@TSAN_OPTIONS=halt_on_error=1 OPENBLAS_NUM_THREADS=1 EG_TEST_SCALE=asan sh tests/run.sh build-tsan/tests

bench: all
	$(B)/bin/engram-bench all

# The service in the foreground on ./data with defaults (Ctrl-C stops it cleanly).
run: all
	@mkdir -p data
	@echo "engramd: starting; try: $(B)/bin/engram --help   (stop with Ctrl-C)"
	exec $(B)/bin/engramd --data ./data --unix ./data/engramd.sock

# The frame parser under libFuzzer (clang); new inputs go to $(B)/fuzz/corpus,
# the seeds in tests/fuzz/corpus are replayed by test_wire in `make test`.
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(wildcard memory/*.c index/*.c engine/*.c net/*.c) tests/fuzz/fuzz_frame.c
fuzz: deps
	@command -v clang >/dev/null 2>&1 || { echo "make fuzz needs clang: apt-get install clang" >&2; exit 1; }
	@mkdir -p $(B)/fuzz/corpus
	clang -std=c11 -g -O1 -D_GNU_SOURCE -pthread $(INC) -fsanitize=fuzzer,address,undefined \
	    $(FUZZ_SRC) -o $(B)/fuzz/fuzz_frame $(LDLIBS)
	$(B)/fuzz/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=65536 $(B)/fuzz/corpus tests/fuzz/corpus

clean:
	rm -rf build build-asan build-tsan
