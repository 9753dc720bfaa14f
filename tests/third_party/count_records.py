#!/usr/bin/env python3
"""Counts the records a client emitted per object, full and incremental, next to the simulator's own
counts. Usage: count_records.py CLIENT FULL_OUTPUT INCREMENTAL_OUTPUT BASE_URL"""

import json
import sys
import urllib.request

client, full_path, incremental_path, base_url = sys.argv[1:5]
seeded = json.load(urllib.request.urlopen(f"{base_url}/__sim/stats"))["records"]


def ids(path):
    found = {}
    for line in open(path):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("type") != "RECORD":
            continue
        if "record" in message and "stream" in message["record"]:  # Airbyte
            stream, data = message["record"]["stream"], message["record"]["data"]
        else:  # Singer
            stream, data = message["stream"], message["record"]
        found.setdefault(stream, set()).add(data["Id"])
    return found


full, incremental = ids(full_path), ids(incremental_path)
for name in ["Account", "Lead", "Opportunity", "Order"]:
    print(json.dumps({"client": client, "object": name, "full": len(full.get(name, ())),
                      "seeded": seeded.get(name, 0), "incremental": len(incremental.get(name, ())), "edited": 3}))
