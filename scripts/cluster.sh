#!/usr/bin/env bash
# Starts or stops a 3-member raft-node cluster on 127.0.0.1-3, with data, logs and
# PID files under ${STATE:-.raftlane}/cluster. Usage: cluster.sh up|down|status
set -euo pipefail

STATE=${STATE:-.raftlane}
DIR="$STATE/cluster"
BIN=${BIN:-target/release}
CLUSTER_ID=${CLUSTER_ID:-local}
N=3

peers() {
  local out=() i
  for i in $(seq 1 $N); do out+=("$i=127.0.0.$i:7000"); done
  (IFS=,; echo "${out[*]}")
}

up() {
  mkdir -p "$DIR"
  local i voters
  voters=$(seq -s, 1 $N)
  for i in $(seq 1 $N); do
    if [[ -f "$DIR/member-$i.pid" ]] && kill -0 "$(cat "$DIR/member-$i.pid")" 2>/dev/null; then
      echo "member $i already running (pid $(cat "$DIR/member-$i.pid"))"
      continue
    fi
    "$BIN/raft-node" --id "$i" --cluster-id "$CLUSTER_ID" --data-dir "$DIR/member-$i" \
      --peer-addr "127.0.0.$i:7000" --client-addr "127.0.0.$i:7001" \
      --admin-addr "127.0.0.$i:7002" --metrics-addr "127.0.0.$i:7003" \
      --initial-voters "$voters" --peers "$(peers)" \
      >"$DIR/member-$i.log" 2>&1 &
    echo $! >"$DIR/member-$i.pid"
    echo "member $i: pid $!, client 127.0.0.$i:7001, admin 127.0.0.$i:7002, log $DIR/member-$i.log"
  done
  echo "endpoints: 127.0.0.1:7001,127.0.0.2:7001,127.0.0.3:7001"
  echo "try: $BIN/raftctl --endpoints 127.0.0.1:7001,127.0.0.2:7001,127.0.0.3:7001 put hello world"
}

down() {
  local f pid
  shopt -s nullglob
  for f in "$DIR"/member-*.pid; do
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      echo "stopped pid $pid"
    fi
    rm -f "$f"
  done
}

status() {
  local i
  for i in $(seq 1 $N); do
    "$BIN/raftctl" --admin "127.0.0.$i:7002" status || echo "member $i: not answering"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
