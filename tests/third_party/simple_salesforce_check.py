#!/usr/bin/env python3
"""Reads a running `crmsync simulate salesforce` with simple-salesforce (unchanged, from PyPI).

Usage: simple_salesforce_check.py BASE_URL

Logs in with the simulator's demo refresh token (OAuth refresh-token grant), then with
simple-salesforce: lists the API versions and the global describe, describes every object, reads
every record of each (query_all: query + nextRecordsUrl), checks the ids against the simulator's own
counts (GET /__sim/stats), edits 3 records of each object through sObject Collections, and reads
again incrementally (SystemModstamp > the newest stamp of the full read): exactly the edited ids must
come back. Prints one JSON line per object and exits non-zero on any mismatch.

simple-salesforce always builds https:// URLs from the instance host; the simulator serves plain
http on loopback, so the requests session given to simple-salesforce (a documented argument) sends
https://127.0.0.1 requests as http. Nothing in the package is changed.
"""

import json
import sys
import urllib.parse

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce

CLIENT_ID = "crmsync-demo"
CLIENT_SECRET = "demo-client-secret"
REFRESH_TOKEN = "demo-refresh-token"
OBJECTS = ["Account", "Lead", "Opportunity", "Order"]
EDITED = 3


class LoopbackHttp(HTTPAdapter):
    """Sends https://127.0.0.1:PORT requests to http://127.0.0.1:PORT (the simulator has no TLS)."""

    def send(self, request, **kwargs):
        parts = urllib.parse.urlsplit(request.url)
        if parts.scheme == "https" and parts.hostname in ("127.0.0.1", "localhost"):
            request.url = urllib.parse.urlunsplit(("http",) + tuple(parts[1:]))
        return super().send(request, **kwargs)


def connect(base_url: str) -> Salesforce:
    """Logs in with the demo refresh token and returns a simple-salesforce client."""
    session = requests.Session()
    session.mount("https://", LoopbackHttp())
    token = session.post(
        f"{base_url}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
        },
        timeout=30,
    )
    token.raise_for_status()
    auth = token.json()
    return Salesforce(instance_url=auth["instance_url"], session_id=auth["access_token"], session=session)


def main() -> int:
    base_url = sys.argv[1].rstrip("/")
    session = requests.Session()
    session.mount("https://", LoopbackHttp())
    token = session.post(
        f"{base_url}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
        },
        timeout=30,
    )
    token.raise_for_status()
    auth = token.json()
    sf = Salesforce(instance_url=auth["instance_url"], session_id=auth["access_token"], session=session)

    versions = session.get(f"{base_url}/services/data/", timeout=30).json()
    assert any(version["version"] == sf.sf_version for version in versions), f"{sf.sf_version} not in {versions}"
    described = {entry["name"] for entry in sf.describe()["sobjects"]}
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] > 0, limits
    stats = session.get(f"{base_url}/__sim/stats", timeout=30).json()

    failures = 0
    for name in OBJECTS:
        assert name in described, f"{name} missing from the global describe {sorted(described)}"
        describe = getattr(sf, name).describe()
        fields = [field["name"] for field in describe["fields"] if field["type"] not in ("address", "location")]
        for field in describe["fields"]:
            for attribute in ("type", "length", "nillable", "createable", "updateable", "externalId", "referenceTo"):
                assert attribute in field, f"{name}.{field['name']} has no {attribute}"
        full = sf.query_all(f"SELECT {', '.join(fields)} FROM {name}")
        ids = {record["Id"] for record in full["records"]}
        expected = stats["records"].get(name, 0)
        newest = max((record["SystemModstamp"] for record in full["records"]), default=None)

        edited = sorted(ids)[:EDITED]
        field = {"Account": "Industry", "Lead": "Company", "Opportunity": "Name", "Order": "Description"}[name]
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": name}, "id": record_id, field: f"edited {record_id}"} for record_id in edited],
        }
        results = sf.restful("composite/sobjects", method="PATCH", json=body)
        assert all(result["success"] for result in results), results
        # SOQL datetime literals have whole seconds: read from the newest stamp's second and keep
        # what is newer than the newest stamp of the full read, as an incremental client does.
        since = newest[:19] + "Z" if newest else "2000-01-01T00:00:00Z"
        incremental = sf.query_all(f"SELECT Id, {field}, SystemModstamp FROM {name} WHERE SystemModstamp >= {since}")
        changed = {record["Id"] for record in incremental["records"] if newest is None or record["SystemModstamp"] > newest}

        ok = len(ids) == expected == full["totalSize"] and changed == set(edited)
        failures += 0 if ok else 1
        print(json.dumps({"client": "simple-salesforce", "object": name, "full": len(ids), "seeded": expected,
                          "incremental": len(changed), "edited": len(edited), "ok": ok}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
