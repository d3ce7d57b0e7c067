"""Summarise ``pip-audit --format json``: how many packages were audited, and each known
vulnerability. Exits 1 if there is one.

pip-audit asks PyPI's JSON API about each package. Where only a mirror of the package
index is reachable, every package comes back skipped and pip-audit still prints "No
known vulnerabilities found": this says that nothing was audited instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> int:
    text = Path(path).read_text()
    if not text.strip():
        print("pip-audit wrote no report: it failed (its error is above)", file=sys.stderr)
        return 2
    dependencies = json.loads(text)["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    found = [(d, v) for d in audited for v in d.get("vulns", [])]
    for dependency, vuln in found:
        fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
        print(f"VULNERABLE {dependency['name']} {dependency['version']}: {vuln['id']} "
              f"(fixed in {fixed})")
    print(f"pip-audit: {len(audited)} of {len(dependencies)} installed packages audited, "
          f"{len(found)} known vulnerabilities")
    if dependencies and not audited:
        print("pip-audit: WARNING: nothing was audited; the vulnerability service (PyPI's "
              "JSON API) is out of reach from this machine")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
