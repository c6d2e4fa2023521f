"""Ready-to-paste code that sends a first event to this Tessera with a source's write key:
curl, Python (segment-analytics-python), Node (@segment/analytics-node) and analytics.js.

Each is a whole program that sends one `track` and waits until it is delivered, so pasting
it and running it shows the event in the source's live view. tests/clients runs the Python
and Node ones with the official SDKs pinned there, and the curl one through a live server.

The browser snippet is for `@segment/analytics-next` (analytics.js 2.0) from npm, given the
source's settings inline: Segment's hosted `<script>` snippet fetches the settings of the
write key from Segment's CDN, which does not know Tessera's keys, and would not load.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

EVENT = "Signed Up"
USER_ID = "user-1"
PROPERTIES = {"plan": "trial"}


@dataclass(frozen=True, slots=True)
class Snippets:
    curl: str
    python: str
    node: str
    analytics_js: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _js(value: object) -> str:
    """A JavaScript literal: JSON is one, and escapes what a string needs."""
    return json.dumps(value)


def snippets(base_url: str, write_key: str) -> Snippets:
    """The four snippets for a Tessera reached at `base_url` (scheme and host, as clients
    see it, e.g. https://cdp.example.com) and a source's `write_key`."""
    base = base_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the base URL must be http(s)://host[:port], got {base_url!r}")
    body = json.dumps({"userId": USER_ID, "event": EVENT, "properties": PROPERTIES})
    curl = (
        f"curl -u {shlex.quote(write_key + ':')} {shlex.quote(base + '/v1/track')} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    python = "\n".join(
        [
            "# pip install segment-analytics-python",
            "import segment.analytics as analytics",
            "",
            f"analytics.write_key = {write_key!r}",
            f"analytics.host = {base!r}",
            "",
            f"analytics.track({USER_ID!r}, {EVENT!r}, {PROPERTIES!r})",
            "analytics.flush()  # send now; a long-running program need not",
            "",
        ]
    )
    node = "\n".join(
        [
            "// npm install @segment/analytics-node   (save as send.mjs, run: node send.mjs)",
            "import { Analytics } from '@segment/analytics-node'",
            "",
            f"const analytics = new Analytics({{ writeKey: {_js(write_key)}, host: {_js(base)} }})",
            "",
            "analytics.track({",
            f"  userId: {_js(USER_ID)},",
            f"  event: {_js(EVENT)},",
            f"  properties: {_js(PROPERTIES)},",
            "})",
            "await analytics.closeAndFlush()  // send now; a long-running server need not",
            "",
        ]
    )
    settings = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": parts.netloc + parts.path + "/v1",
                "protocol": parts.scheme,
            }
        }
    }
    analytics_js = "\n".join(
        [
            "// npm install @segment/analytics-next",
            "import { AnalyticsBrowser } from '@segment/analytics-next'",
            "",
            "export const analytics = AnalyticsBrowser.load({",
            f"  writeKey: {_js(write_key)},",
            "  // Tessera's settings for this source, given here: no settings CDN is asked.",
            f"  cdnSettings: {json.dumps(settings)},",
            "})",
            "",
            "analytics.page()",
            f"analytics.track({_js(EVENT)}, {_js(PROPERTIES)})",
            "",
        ]
    )
    return Snippets(curl=curl, python=python, node=node, analytics_js=analytics_js)
