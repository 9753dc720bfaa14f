#!/usr/bin/env bash
# Runs three unchanged third-party Salesforce clients from PyPI against `crmsync simulate salesforce`
# and prints the records each reads per object, in a full read and in an incremental read after
# 3 records of each object changed:
#   - simple-salesforce (what CI runs, tests/it/third_party.rs),
#   - the Singer tap-salesforce (REST API mode),
#   - Airbyte's source-salesforce (Bulk API 2.0 / REST, as it chooses).
# Usage: tests/third_party/salesforce_clients.sh [RECORDS]   (needs python3 and network access to PyPI
# on the first run; virtualenvs go to target/third-party-*). Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
records=${1:-250}
here=tests/third_party
venv() { # venv NAME PACKAGE
  if [ ! -x "target/third-party-$1/bin/python" ]; then
    python3 -m venv "target/third-party-$1"
    "target/third-party-$1/bin/pip" install --quiet --disable-pip-version-check "$2" </dev/null
  fi
}
venv simple simple-salesforce
venv singer tap-salesforce
venv airbyte airbyte-source-salesforce
cargo build --quiet --bin crmsync
work=$(mktemp -d)
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

start_sim() {
  target/debug/crmsync simulate salesforce --port 0 --records "$records" --seed 7 >"$work/sim.out" 2>"$work/sim.err" &
  sim_pid=$!
  for _ in $(seq 100); do
    base=$(grep -o 'listening on http://[0-9.:]*' "$work/sim.out" | sed 's/listening on //' || true)
    [ -n "$base" ] && break
    sleep 0.1
  done
  export CRMSYNC_SF_SIM=$base
}
stop_sim() { kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true; }
edit3() { # edit3: changes 3 records of each object through sObject Collections
  "target/third-party-simple/bin/python" "$here/edit_records.py" "$CRMSYNC_SF_SIM"
}

echo "== simple-salesforce"
start_sim
"target/third-party-simple/bin/python" "$here/simple_salesforce_check.py" "$CRMSYNC_SF_SIM"
stop_sim

echo "== Singer tap-salesforce (api_type REST)"
start_sim
cat >"$work/tap.json" <<JSON
{"client_id": "crmsync-demo", "client_secret": "demo-client-secret", "refresh_token": "demo-refresh-token",
 "start_date": "2000-01-01T00:00:00Z", "api_type": "REST", "select_fields_by_default": true, "is_sandbox": false}
JSON
tap() { PYTHONPATH="$here" "target/third-party-singer/bin/python" -c 'import loopback, sys; from tap_salesforce import main; sys.argv[0] = "tap-salesforce"; main()' "$@"; }
tap --config "$work/tap.json" --discover >"$work/catalog.json"
"target/third-party-simple/bin/python" "$here/select_streams.py" singer "$work/catalog.json"
tap --config "$work/tap.json" --properties "$work/catalog.json" >"$work/full.jsonl"
grep '"type": "STATE"\|"type":"STATE"' "$work/full.jsonl" | tail -1 | "target/third-party-simple/bin/python" -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read())["value"]))' >"$work/state.json"
edit3
tap --config "$work/tap.json" --properties "$work/catalog.json" --state "$work/state.json" >"$work/incremental.jsonl"
"target/third-party-simple/bin/python" "$here/count_records.py" tap-salesforce "$work/full.jsonl" "$work/incremental.jsonl" "$CRMSYNC_SF_SIM"
stop_sim

echo "== Airbyte source-salesforce"
start_sim
# lookback_window: the source re-reads, by default, whatever changed in the 10 minutes before its
# last sync (PT10M). The simulator stamps its seeded records up to the second it starts, so with
# the default the incremental read would also return every record seeded in those 10 minutes;
# PT0S (a documented setting of the source) makes it read from where it stopped.
cat >"$work/airbyte.json" <<JSON
{"client_id": "crmsync-demo", "client_secret": "demo-client-secret", "refresh_token": "demo-refresh-token",
 "start_date": "2000-01-01T00:00:00Z", "is_sandbox": false, "auth_type": "Client", "lookback_window": "PT0S"}
JSON
# Airbyte writes its Bulk API result files to the working directory: run it in $work. A failed read
# is reported with what it read, not fatal to the script.
root=$(pwd)
airbyte() { (cd "$work" && PYTHONPATH="$root/$here" "$root/target/third-party-airbyte/bin/python" -c 'import loopback, sys; from source_salesforce.run import run; sys.argv[0] = "source-salesforce"; run()' "$@"); }
airbyte check --config "$work/airbyte.json" | grep -o '"connectionStatus":{[^}]*}' || true
airbyte discover --config "$work/airbyte.json" >"$work/discover.jsonl"
"target/third-party-simple/bin/python" "$here/select_streams.py" airbyte "$work/discover.jsonl" >"$work/configured.json"
airbyte read --config "$work/airbyte.json" --catalog "$work/configured.json" >"$work/ab-full.jsonl" || echo "airbyte read (full) failed: $(grep -o '"internal_message":"[^"]*"' "$work/ab-full.jsonl" | sort -u | head -3)"
"target/third-party-simple/bin/python" "$here/select_streams.py" airbyte-state "$work/ab-full.jsonl" >"$work/ab-state.json"
edit3
airbyte read --config "$work/airbyte.json" --catalog "$work/configured.json" --state "$work/ab-state.json" >"$work/ab-incremental.jsonl" || echo "airbyte read (incremental) failed"
"target/third-party-simple/bin/python" "$here/count_records.py" airbyte "$work/ab-full.jsonl" "$work/ab-incremental.jsonl" "$CRMSYNC_SF_SIM"
stop_sim
