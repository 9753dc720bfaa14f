#!/usr/bin/env python3
"""Airbyte's Zoho CRM source (PyPI airbyte-source-zoho-crm) against `crmsync simulate zoho`.

Reads every stream the source discovers in full, checks that it got exactly the records the
simulator seeded (ids per module, from the simulator's /__sim/stats counters and its own API),
changes a few records through the Zoho API as a user would, reads incrementally from the state the
full read left, and checks that exactly the changed records come back.

    python3 tests/third_party/zoho_airbyte.py --crmsync target/debug/crmsync [--records 300]

(or `tests/third_party/run.sh zoho`, see tests/third_party/README.md)

It installs the source into a virtualenv of its own (`--venv`, default $TMPDIR/crmsync-airbyte-zoho)
the first time. The source hard-codes Zoho's hosts (accounts.zoho.com, zohoapis.com) in two URL
tables and has no setting for them, so the runner replaces those two tables with the simulator's URL
before starting the source; nothing else of the source is changed. Everything stays on loopback.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

SOURCE = "airbyte-source-zoho-crm==0.3.6"
MODULES = ["Accounts", "Leads", "Deals", "Sales_Orders", "Products"]


def ensure_venv(path):
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    probe = subprocess.run([python, "-c", "import source_zoho_crm"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "--quiet", SOURCE], check=True)
    return python


# Runs inside the virtualenv: the Airbyte entrypoint, after pointing the source's two URL tables at
# the simulator. argv: base_url, then the Airbyte command line.
BOOTSTRAP = """
import sys
from types import MappingProxyType
from source_zoho_crm.api import ZohoAPI
base = sys.argv[1]
ZohoAPI._DC_REGION_TO_ACCESS_URL = MappingProxyType({"US": base})
ZohoAPI._DC_REGION_TO_API_URL = MappingProxyType({"US": base})
from airbyte_cdk.entrypoint import launch
from source_zoho_crm.source import SourceZohoCrm
launch(SourceZohoCrm(), sys.argv[2:])
"""


def airbyte(python, base, args):
    done = subprocess.run([python, "-c", BOOTSTRAP, base, *args], capture_output=True, text=True, timeout=600)
    messages = []
    for line in done.stdout.splitlines():
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    errors = [m for m in messages if m.get("type") == "TRACE" and m["trace"].get("type") == "ERROR"]
    if done.returncode != 0 or errors:
        sys.exit(f"airbyte {args[0]} failed ({done.returncode}): {errors or done.stderr[-3000:]}")
    return messages


def http(method, url, token=None, body=None, params=None):
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Zoho-oauthtoken {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def start_simulator(crmsync, records):
    process = subprocess.Popen(
        [crmsync, "simulate", "zoho", "--port", "0", "--records", str(records)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    while True:
        line = process.stdout.readline()
        if not line:
            sys.exit("the simulator exited before printing its address:\n" + "".join(lines))
        lines.append(line)
        if "simulator listening on " in line:
            base = line.split("simulator listening on ")[1].split()[0]
            break
    secrets = {}
    deadline = time.monotonic() + 10
    while len(secrets) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("export "):
            name, value = line[len("export "):].strip().split("=", 1)
            secrets[name] = value
    return process, base, secrets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crmsync", required=True, help="path to the crmsync binary")
    parser.add_argument("--records", type=int, default=300, help="records per entity (under 2,000: the source pages by number)")
    parser.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "crmsync-airbyte-zoho"))
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    process, base, secrets = start_simulator(args.crmsync, args.records)
    try:
        client_id = "1000.CRMSYNCDEMO"
        client_secret = secrets["CRMSYNC_DEMO_ZOHO_CLIENT_SECRET"]
        refresh_token = secrets["CRMSYNC_DEMO_ZOHO_REFRESH_TOKEN"]
        work = tempfile.mkdtemp(prefix="zoho-airbyte-")
        config = {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "dc_region": "US",
            "environment": "Production",
            "start_datetime": "2000-01-01T00:00:00+00:00",
        }
        config_path = os.path.join(work, "config.json")
        with open(config_path, "w") as file:
            json.dump(config, file)
        token = http(
            "POST",
            f"{base}/oauth/v2/token",
            params={"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret, "refresh_token": refresh_token},
        )["access_token"]

        def seeded_ids(module):
            ids, page = set(), 1
            while True:
                body = http("GET", f"{base}/crm/v8/{module}", token, params={"fields": "id", "page": page, "per_page": 200})
                if body is None:
                    return ids
                ids.update(row["id"] for row in body["data"])
                if not body["info"]["more_records"]:
                    return ids
                page += 1

        expected = {module: seeded_ids(module) for module in MODULES}
        stats = http("GET", f"{base}/__sim/stats")
        for module in MODULES:
            assert len(expected[module]) == stats["records"][module], (module, len(expected[module]), stats["records"])

        check = airbyte(python, base, ["check", "--config", config_path])
        status = [m for m in check if m.get("type") == "CONNECTION_STATUS"]
        assert status and status[0]["connectionStatus"]["status"] == "SUCCEEDED", status
        catalog = [m for m in airbyte(python, base, ["discover", "--config", config_path]) if m.get("type") == "CATALOG"][0]["catalog"]
        # Stream names come from the source's class names: incremental_sales__orders_zoho_crm_stream.
        def module_of(stream_name):
            flat = stream_name.replace("_", "")
            return next((module for module in MODULES if f"incremental{module.replace('_', '').lower()}zoho" in flat), None)

        streams = {module_of(stream["name"]): stream for stream in catalog["streams"]}
        assert set(streams) == set(MODULES), f"discovered {[stream['name'] for stream in catalog['streams']]}"
        configured = {
            "streams": [
                {"stream": stream, "sync_mode": "incremental", "destination_sync_mode": "append", "cursor_field": ["Modified_Time"]}
                for stream in streams.values()
            ]
        }
        catalog_path = os.path.join(work, "catalog.json")
        with open(catalog_path, "w") as file:
            json.dump(configured, file)

        def read(state=None):
            command = ["read", "--config", config_path, "--catalog", catalog_path]
            if state is not None:
                state_path = os.path.join(work, "state.json")
                with open(state_path, "w") as file:
                    json.dump(state, file)
                command += ["--state", state_path]
            messages = airbyte(python, base, command)
            got = {module: [] for module in MODULES}
            states = {}
            for message in messages:
                if message.get("type") == "RECORD":
                    got[module_of(message["record"]["stream"])].append(message["record"]["data"]["id"])
                elif message.get("type") == "STATE" and message["state"].get("type") == "STREAM":
                    descriptor = message["state"]["stream"]["stream_descriptor"]["name"]
                    states[descriptor] = message["state"]
            return got, list(states.values())

        calls_before = http("GET", f"{base}/__sim/stats")["read_calls"]
        full, state = read()
        full_calls = http("GET", f"{base}/__sim/stats")["read_calls"] - calls_before
        for module in MODULES:
            ids = full[module]
            assert len(ids) == len(set(ids)), f"{module}: {len(ids) - len(set(ids))} duplicates"
            assert set(ids) == expected[module], f"{module}: read {len(set(ids))}, seeded {len(expected[module])}"
        # Change records as a user would: Modified_Time has second granularity, and the source asks
        # from one second after the newest it saw.
        time.sleep(2.1)
        changed = {"Accounts": sorted(expected["Accounts"])[:3], "Deals": sorted(expected["Deals"])[:2]}
        for module, ids in changed.items():
            field = "Account_Name" if module == "Accounts" else "Deal_Name"
            body = {"data": [{"id": id_, field: f"Edited {id_}"} for id_ in ids]}
            http("PUT", f"{base}/crm/v8/{module}", token, body)
        calls_before = http("GET", f"{base}/__sim/stats")["read_calls"]
        incremental, _ = read(state)
        incremental_calls = http("GET", f"{base}/__sim/stats")["read_calls"] - calls_before
        for module in MODULES:
            assert sorted(incremental[module]) == sorted(changed.get(module, [])), f"{module}: incremental read {incremental[module]}"
        print("module        seeded  full read  incremental (changed)")
        for module in MODULES:
            print(f"{module:<13} {len(expected[module]):>6}  {len(full[module]):>9}  {len(incremental[module]):>11} ({len(changed.get(module, []))})")
        print(f"simulator read calls: full {full_calls} (metadata + pages), incremental {incremental_calls}")
        print("OK: Airbyte's Zoho CRM source read exactly the seeded records, then exactly the changed ones")
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
