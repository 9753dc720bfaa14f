#!/usr/bin/env python3
"""Airbyte's Microsoft Dataverse source (PyPI airbyte-source-microsoft-dataverse) against `crmsync simulate dynamics365`.

Discovers the simulator's tables, reads the synced ones (and the order lines) in full with change
tracking, checks that it got exactly the rows the simulator seeded, changes a few rows of each
table through the Web API as a user would, reads again from the delta tokens the full read left,
and checks that exactly the changed rows come back.

    python3 tests/third_party/dataverse_airbyte.py --crmsync target/debug/crmsync [--records 250]

(or `tests/third_party/run.sh dataverse`, see tests/third_party/README.md)

It installs the source into a virtualenv of its own (`--venv`) the first time. The source fetches
its token from the fixed host login.microsoftonline.com; the runner sends that one host's requests
to the simulator (which serves the Microsoft identity platform's token endpoint) and changes
nothing else of the source. Everything stays on loopback.
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

SOURCE = "airbyte-source-microsoft-dataverse==1.0.2"
# Table logical name -> (entity set, key column, a text column a user edits).
TABLES = {
    "account": ("accounts", "accountid", "name"),
    "lead": ("leads", "leadid", "subject"),
    "opportunity": ("opportunities", "opportunityid", "name"),
    "salesorder": ("salesorders", "salesorderid", "name"),
    "salesorderdetail": ("salesorderdetails", "salesorderdetailid", "quantity"),
}
EDITED = 3

# Runs inside the virtualenv: redirects login.microsoftonline.com to the simulator, then the
# source's entrypoint. argv: the simulator's base URL, then the Airbyte command line.
BOOTSTRAP = """
import sys, urllib.parse
from requests.adapters import HTTPAdapter
sim = urllib.parse.urlsplit(sys.argv[1])
send = HTTPAdapter.send
def redirected(self, request, **kwargs):
    parts = urllib.parse.urlsplit(request.url)
    if parts.hostname == "login.microsoftonline.com":
        request.url = urllib.parse.urlunsplit((sim.scheme, sim.netloc, parts.path, parts.query, parts.fragment))
    return send(self, request, **kwargs)
HTTPAdapter.send = redirected
from airbyte_cdk.entrypoint import launch
from source_microsoft_dataverse.source import SourceMicrosoftDataverse
launch(SourceMicrosoftDataverse(), sys.argv[2:])
"""


def ensure_venv(path):
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    probe = subprocess.run([python, "-c", "import source_microsoft_dataverse"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SOURCE], check=True)
    return python


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


def http(method, url, token=None, body=None, form=None):
    data = None
    request = urllib.request.Request(url, method=method)
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    elif body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, data=data, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def start_simulator(crmsync, records):
    process = subprocess.Popen(
        [crmsync, "simulate", "dynamics365", "--port", "0", "--records", str(records)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines, base, values = [], None, {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ("CRMSYNC_DEMO_D365_CLIENT_SECRET" in values and base):
        line = process.stdout.readline()
        if not line:
            sys.exit("the simulator exited before printing its address:\n" + "".join(lines))
        lines.append(line)
        if base is None and "simulator listening on " in line:
            base = line.split("simulator listening on ")[1].split()[0]
        if line.startswith("export "):
            name, value = line[len("export "):].strip().split("=", 1)
            values[name] = value
    text = "".join(lines)
    tenant = text.split('tenant_id = "')[1].split('"')[0]
    client_id = text.split('client_id = "')[1].split('"')[0]
    return process, base, tenant, client_id, values["CRMSYNC_DEMO_D365_CLIENT_SECRET"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crmsync", required=True, help="path to the crmsync binary")
    parser.add_argument("--records", type=int, default=250, help="records per entity")
    parser.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "crmsync-airbyte-dataverse"))
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    process, base, tenant, client_id, secret = start_simulator(args.crmsync, args.records)
    try:
        work = tempfile.mkdtemp(prefix="dataverse-airbyte-")
        config = {"url": base, "tenant_id": tenant, "client_id": client_id, "client_secret_value": secret, "odata_maxpagesize": 100}
        config_path = os.path.join(work, "config.json")
        with open(config_path, "w") as file:
            json.dump(config, file)
        token = http(
            "POST",
            f"{base}/{tenant}/oauth2/v2.0/token",
            form={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": f"{base}/.default"},
        )["access_token"]
        api = f"{base}/api/data/v9.2"

        def rows(table, select, condition=None):
            entity_set, key, _ = TABLES[table]
            url = f"{api}/{entity_set}?" + urllib.parse.urlencode({"$select": ",".join([key, *select])})
            if condition:
                url += "&" + urllib.parse.urlencode({"$filter": condition})
            found = []
            while url:
                page = http("GET", url, token)
                found.extend(page["value"])
                url = page.get("@odata.nextLink")
            return found

        expected = {table: {row[TABLES[table][1]] for row in rows(table, [])} for table in TABLES}
        check = airbyte(python, base, ["check", "--config", config_path])
        status = [m for m in check if m.get("type") == "CONNECTION_STATUS"]
        assert status and status[0]["connectionStatus"]["status"] == "SUCCEEDED", status
        catalog = [m for m in airbyte(python, base, ["discover", "--config", config_path]) if m.get("type") == "CATALOG"][0]["catalog"]
        streams = {stream["name"]: stream for stream in catalog["streams"] if stream["name"] in TABLES}
        assert set(streams) == set(TABLES), f"discovered {[stream['name'] for stream in catalog['streams']]}"
        for name, stream in streams.items():
            assert "incremental" in stream["supported_sync_modes"], (name, stream["supported_sync_modes"])
        configured = {
            "streams": [
                {
                    "stream": stream,
                    "sync_mode": "incremental",
                    "destination_sync_mode": "append",
                    "cursor_field": stream.get("default_cursor_field") or ["modifiedon"],
                    "primary_key": stream.get("source_defined_primary_key"),
                }
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
            got = {table: [] for table in TABLES}
            states = {}
            for message in airbyte(python, base, command):
                if message.get("type") == "RECORD":
                    table = message["record"]["stream"]
                    got[table].append(message["record"]["data"][TABLES[table][1]])
                elif message.get("type") == "STATE" and message["state"].get("type") == "STREAM":
                    states[message["state"]["stream"]["stream_descriptor"]["name"]] = message["state"]
            return got, list(states.values())

        full, state = read()
        # Changes a user makes: EDITED active orders renamed with one line each re-quantified, and
        # EDITED open opportunities, accounts and leads renamed. (An order's total follows its lines:
        # the edited lines belong to the edited orders, so exactly those orders change.)
        changed = {table: set() for table in TABLES}
        for table, condition in [("account", None), ("lead", None), ("opportunity", "statecode eq 0"), ("salesorder", "statecode eq 0")]:
            entity_set, key, column = TABLES[table]
            for row in rows(table, [column], condition)[:EDITED]:
                http("PATCH", f"{api}/{entity_set}({row[key]})", token, {column: f"{row.get(column) or ''} (edited)"})
                changed[table].add(row[key])
        for order in sorted(changed["salesorder"]):
            line = rows("salesorderdetail", ["quantity"], f"_salesorderid_value eq {order}")[0]
            http("PATCH", f"{api}/salesorderdetails({line['salesorderdetailid']})", token, {"quantity": 97})
            changed["salesorderdetail"].add(line["salesorderdetailid"])
        incremental, _ = read(state)
        ok = True
        print(f"{'table':<18}{'seeded':>8}{'full read':>11}{'incremental (changed)':>24}")
        for table in TABLES:
            full_ok = sorted(full[table]) == sorted(expected[table])
            incremental_ok = sorted(incremental[table]) == sorted(changed[table])
            ok = ok and full_ok and incremental_ok
            print(f"{table:<18}{len(expected[table]):>8}{len(full[table]):>11}{len(incremental[table]):>16} ({len(changed[table])})")
            print(json.dumps({"client": "airbyte-dataverse", "object": table, "full": len(full[table]), "seeded": len(expected[table]),
                              "incremental": len(incremental[table]), "edited": len(changed[table]), "ok": full_ok and incremental_ok}))
        if not ok:
            sys.exit("FAILED: Airbyte's Dataverse source did not read exactly the seeded, then the changed, rows")
        print("OK: Airbyte's Dataverse source read exactly the seeded rows, then exactly the changed ones")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
