"""A node imports no server code: neither FloRec's strategies/server nor ``flwr.serverapp``."""

import json
import subprocess
import sys

PROBE = """
import builtins, json, sys
importers = []
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    who = (globals or {}).get("__name__", "")
    wanted = [name] + [f"{name}.{f}" for f in (fromlist or ())]
    if who.startswith("florec") and any(w.startswith("flwr.serverapp") for w in wanted):
        importers.append(who)
    return real_import(name, globals, locals, fromlist, level)

import flwr.clientapp  # Flower's own ClientApp (it loads parts of flwr.serverapp itself)
flower_only = sorted(m for m in sys.modules if m.startswith("flwr.serverapp"))
builtins.__import__ = spy
import florec.client.app
import importlib, pkgutil, florec.client
for info in pkgutil.walk_packages(florec.client.__path__, "florec.client."):
    importlib.import_module(info.name)  # every node module, CoT-Rec's and the trainers included
builtins.__import__ = real_import
print(json.dumps({
    "florec_serverapp_importers": importers,
    "flower_only": flower_only,
    "after": sorted(m for m in sys.modules if m.startswith("flwr.serverapp")),
    "server_side": sorted(m for m in sys.modules
                          if m.startswith(("florec.strategies", "florec.server"))),
}))
"""


def test_importing_the_client_app_imports_no_server_code():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["server_side"] == []
    assert seen["florec_serverapp_importers"] == []
    # FloRec adds no flwr.serverapp module to what flwr.clientapp itself already loads
    assert seen["after"] == seen["flower_only"]
