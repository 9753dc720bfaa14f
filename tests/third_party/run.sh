#!/usr/bin/env bash
# Runs the third-party clients, unchanged from PyPI, against `crmsync simulate` and prints what each
# read per object, in a full read and in an incremental read after a few records changed.
# Usage: tests/third_party/run.sh [salesforce|zoho|dataverse|all] [RECORDS]   (from anywhere; see README.md here)
set -euo pipefail
cd "$(dirname "$0")/../.."
which=${1:-all}
records=${2:-250}
case "$which" in
  salesforce|zoho|dataverse|all) ;;
  *) echo "usage: tests/third_party/run.sh [salesforce|zoho|dataverse|all] [RECORDS]" >&2; exit 2 ;;
esac
cargo build --quiet --bin crmsync
if [ "$which" = salesforce ] || [ "$which" = all ]; then
  tests/third_party/salesforce_clients.sh "$records"
fi
if [ "$which" = zoho ] || [ "$which" = all ]; then
  echo "== Airbyte source-zoho-crm"
  python3 tests/third_party/zoho_airbyte.py --crmsync target/debug/crmsync --records "$records" \
    --venv target/third-party-airbyte-zoho
fi
if [ "$which" = dataverse ] || [ "$which" = all ]; then
  echo "== Airbyte source-microsoft-dataverse"
  python3 tests/third_party/dataverse_airbyte.py --crmsync target/debug/crmsync --records "$records" \
    --venv target/third-party-airbyte-dataverse
fi
