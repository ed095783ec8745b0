#!/usr/bin/env bash
# The whole test suite, N times, while another process keeps every core busy:
# a test that passes only on an idle machine is a flaky test.
#
#   benchmarks/loaded_suite.sh [RUNS] [pytest arguments...]
#
# RUNS defaults to 3; pytest arguments default to the whole suite in file
# order (-p no:randomly).  Needs stress-ng (Debian: apt-get install stress-ng).
# Prints each run's summary line and exits non-zero if any run failed.
set -uo pipefail

runs=${1:-3}
shift || true
if [ $# -eq 0 ]; then
    set -- -q -p no:randomly
fi
command -v stress-ng >/dev/null || { echo "needs stress-ng (apt-get install stress-ng)" >&2; exit 2; }

cd "$(dirname "$0")/.."
cores=$(nproc)
stress-ng --cpu "$cores" --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null' EXIT
echo "stress-ng --cpu $cores keeps every core busy (pid $load)"

failed=0
for run in $(seq 1 "$runs"); do
    log=$(mktemp)
    start=$(date +%s)
    python -m pytest "$@" >"$log" 2>&1
    status=$?
    summary=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=' \
        | sed 's/^ *//; s/ *$//')
    echo "run $run/$runs: exit $status, ${summary:-no summary} ($(( $(date +%s) - start )) s)"
    if [ "$status" -ne 0 ]; then
        failed=1
        grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
        echo "    full output: $log"
    else
        rm -f "$log"
    fi
done
exit "$failed"
