#!/bin/sh
# Run every test program in $1, sum their "N passed, N failed" lines and
# print the total alone on the last line. A program that crashes or prints
# no summary counts as one failed case.
dir=${1:-build/tests}
passed=0; failed=0
for t in "$dir"/test_*; do
    case "$t" in *.o) continue;; esac
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    out=$(mktemp)
    "$t" </dev/null >"$out" 2>&1
    rc=$?
    cat "$out"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    rm -f "$out"
    if [ -z "$line" ]; then
        echo "FAIL $name: exited $rc without a summary"
        failed=$((failed + 1)); continue
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited $rc"; failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
