#!/usr/bin/env bash
# Runs the whole fault suite N times in a row and prints "N runs, K failed".
#   tests/faults/repeat.sh 10
set -uo pipefail
cd "$(dirname "$0")/../.."
n="${1:?usage: tests/faults/repeat.sh N}"
py="${PYTHON:-.venv/bin/python}"
failed=0
for i in $(seq 1 "$n"); do
  if XLA_FLAGS=--xla_force_host_platform_device_count=8 "$py" -m pytest -q -p no:cacheprovider \
      tests/faults > "/tmp/trajax-faults-run-$i.log" 2>&1; then
    echo "run $i: passed ($(tail -n 1 "/tmp/trajax-faults-run-$i.log"))"
  else
    failed=$((failed + 1))
    echo "run $i: FAILED, log in /tmp/trajax-faults-run-$i.log"
  fi
done
echo "$n runs, $failed failed"
[ "$failed" -eq 0 ]
