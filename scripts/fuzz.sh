#!/usr/bin/env bash
# Long fuzz run of the IDX, CIFAR and STL-10 parsers: the property tests of
# src/data/fuzz_tests.rs with many more cases than `cargo test` runs.
# Usage: scripts/fuzz.sh [CASES_PER_TEST [PARSER...]]   (default: 200000, idx cifar stl)
# Each test prints "fuzz NAME: N inputs, M parsed, 0 panics"; a panic fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-200000}"
shift || true
parsers=("$@")
[ ${#parsers[@]} -gt 0 ] || parsers=(idx cifar stl)
for parser in "${parsers[@]}"; do
    SELFSUP_FUZZ_CASES="$cases" cargo test --release --lib "fuzz_${parser}_" -- --nocapture --test-threads 1 2>&1 |
        grep --line-buffered -E 'inputs|test result|panicked'
done
