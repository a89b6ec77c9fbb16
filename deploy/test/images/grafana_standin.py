"""Stand-in for Grafana in the compose test, where its image cannot be had.

Serves on 3000 what a health check and a quick look use: GET /api/health
and GET /api/search (the dashboards found in the provisioned dashboards
folder, /var/lib/grafana/dashboards, with their titles). It renders
nothing: the test checks only that the provisioning mounts are in place
and the dashboard files parse.
"""

import glob
import json
import os
from http.server import ThreadingHTTPServer

from jsonhttp import JsonHandler

PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS = "/var/lib/grafana/dashboards"


def dashboards():
    found = []
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "**", "*.json"), recursive=True)):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            found.append({"title": doc.get("title", ""), "uid": doc.get("uid", ""), "type": "dash-db", "file": path})
        except (OSError, ValueError) as e:
            found.append({"title": "", "error": str(e), "file": path})
    return found


class Handler(JsonHandler):
    def do_GET(self):
        if self.path == "/api/health":
            self.json({"database": "ok", "version": "standin", "provisioning": os.path.isdir(PROVISIONING)})
        elif self.path.startswith("/api/search"):
            self.json(dashboards())
        else:
            self.send_error(404)



if __name__ == "__main__":
    print(f"grafana stand-in: :3000, dashboards {[d.get('title') for d in dashboards()]}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 3000), Handler).serve_forever()
