"""Load damaged index directories in a child process: a crash there (segfault, abort) fails the
calling test with the child's exit code instead of killing the test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = """
import json, sys
from {module} import {loader} as load
from recemb.errors import RecembError
kwargs = json.loads(sys.argv[2])
out = {{}}
for case, d in json.loads(sys.argv[1]).items():
    try:
        index = load(d, verify=False, **kwargs)
        index.search([[0.1] * index.dim], 10)
        out[case] = "loaded"
    except RecembError:
        out[case] = "error"
print(json.dumps(out))
"""


def load_in_child(loader: str, dirs: dict[str, str], **kwargs: object) -> dict[str, str]:
    """``{case: "error" | "loaded"}`` for each directory, opened by ``loader`` (``module:function``,
    called as ``function(dir, verify=False, **kwargs)``) and searched once, in a child process."""
    module, function = loader.split(":")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(module=module, loader=function), json.dumps(dirs), json.dumps(kwargs)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])
