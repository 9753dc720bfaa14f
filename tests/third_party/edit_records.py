#!/usr/bin/env python3
"""Changes 3 records of each synced object of a `crmsync simulate salesforce` (sObject Collections
update, through simple-salesforce) so an incremental read has something to find. Usage: edit_records.py BASE_URL"""

import sys

from simple_salesforce_check import OBJECTS, connect

sf = connect(sys.argv[1].rstrip("/"))
for name in OBJECTS:
    field = {"Account": "Industry", "Lead": "Company", "Opportunity": "Name", "Order": "Description"}[name]
    ids = sorted(record["Id"] for record in sf.query_all(f"SELECT Id FROM {name}")["records"])[:3]
    records = [{"attributes": {"type": name}, "id": record_id, field: f"edited {record_id}"} for record_id in ids]
    results = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records})
    assert all(result["success"] for result in results), results
