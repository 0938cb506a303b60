#!/usr/bin/env bash
# Runs one phase of `make test` (its name, then the command) and prints its
# wall time when it ends, pass or fail:
#
#   == phase unit: 412 s (ok)
#
# so a CI log shows where the time goes.
set -u
name="$1"
shift
echo "== phase $name: starting"
start=$(date +%s)
"$@"
rc=$?
took=$(($(date +%s) - start))
if [[ $rc -eq 0 ]]; then
	echo "== phase $name: $took s (ok)"
else
	echo "== phase $name: $took s (failed, exit $rc)"
fi
exit "$rc"
