#!/usr/bin/env python3
"""Selects the synced objects in a client's catalog, or extracts Airbyte's last state.

select_streams.py singer CATALOG          (rewrites the Singer catalog in place)
select_streams.py airbyte DISCOVER_OUTPUT (prints a configured catalog, incremental on SystemModstamp)
select_streams.py airbyte-state READ_OUTPUT (prints the last state of each stream)
"""

import json
import sys

OBJECTS = {"Account", "Lead", "Opportunity", "Order"}
mode, path = sys.argv[1], sys.argv[2]
if mode == "singer":
    catalog = json.load(open(path))
    catalog["streams"] = [stream for stream in catalog["streams"] if stream["tap_stream_id"] in OBJECTS]
    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = True
                # Incremental on SystemModstamp, the key the tap offers (valid-replication-keys).
                entry["metadata"]["replication-method"] = "INCREMENTAL"
                entry["metadata"]["replication-key"] = "SystemModstamp"
    json.dump(catalog, open(path, "w"))
elif mode == "airbyte":
    streams = []
    for line in open(path):
        message = json.loads(line)
        if message.get("type") != "CATALOG":
            continue
        for stream in message["catalog"]["streams"]:
            if stream["name"] in OBJECTS:
                streams.append({"stream": stream, "sync_mode": "incremental", "destination_sync_mode": "append",
                                "cursor_field": ["SystemModstamp"], "primary_key": [["Id"]]})
    print(json.dumps({"streams": streams}))
else:
    states = {}
    for line in open(path):
        message = json.loads(line)
        if message.get("type") == "STATE" and message["state"].get("type") == "STREAM":
            states[message["state"]["stream"]["stream_descriptor"]["name"]] = message["state"]
    print(json.dumps(list(states.values())))
