#!/usr/bin/env bash
# Runs the whole fault suite N times in a row and prints "N runs, K failed".
#   tests/faults/repeat.sh 10
# Each run's log goes to a fresh directory (printed), so concurrent repeats never share files.
set -uo pipefail
cd "$(dirname "$0")/../.."
n="${1:?usage: tests/faults/repeat.sh N}"
py="${PYTHON:-.venv/bin/python}"
workers="${TEST_WORKERS:-2}"  # pytest-xdist workers, as `make test`
logs="$(mktemp -d "${TMPDIR:-/tmp}/trajax-faults-repeat.XXXXXX")"
echo "logs in $logs"
failed=0
for i in $(seq 1 "$n"); do
  start=$SECONDS
  if XLA_FLAGS=--xla_force_host_platform_device_count=8 "$py" -m pytest -q -p no:cacheprovider \
      -n "$workers" --dist loadfile tests/faults > "$logs/run-$i.log" 2>&1; then
    echo "run $i: passed in $((SECONDS - start)) s ($(tail -n 1 "$logs/run-$i.log"))"
  else
    failed=$((failed + 1))
    echo "run $i: FAILED in $((SECONDS - start)) s, log in $logs/run-$i.log"
  fi
done
echo "$n runs, $failed failed"
[ "$failed" -eq 0 ]
