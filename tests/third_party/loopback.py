"""Points unchanged third-party Salesforce clients at a `crmsync simulate salesforce` on loopback.

Imported before a client runs (see salesforce_clients.sh). Clients that log in against the fixed
hosts https://login.salesforce.com / https://test.salesforce.com (Singer tap-salesforce, Airbyte's
source-salesforce) are sent to the simulator named by CRMSYNC_SF_SIM, and https:// requests to
loopback go out as http:// (the simulator serves no TLS). Only the transport is redirected: every
request the client builds, and every answer it parses, is unchanged.
"""

import os
import urllib.parse

from requests.adapters import HTTPAdapter

_SIM = urllib.parse.urlsplit(os.environ["CRMSYNC_SF_SIM"])
_LOGIN_HOSTS = {"login.salesforce.com", "test.salesforce.com"}
_send = HTTPAdapter.send


def _redirected_send(self, request, **kwargs):
    parts = urllib.parse.urlsplit(request.url)
    if parts.hostname in _LOGIN_HOSTS or parts.hostname in ("127.0.0.1", "localhost"):
        request.url = urllib.parse.urlunsplit(("http", _SIM.netloc, parts.path, parts.query, parts.fragment))
    return _send(self, request, **kwargs)


HTTPAdapter.send = _redirected_send
