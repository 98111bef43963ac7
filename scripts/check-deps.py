#!/usr/bin/env python3
"""Checks the dependency direction of ARCHITECTURE.md: which workspace crates each crate may use, and which outside
systems' crates it must not reach, even transitively."""
import json
import subprocess
import sys

# crate -> workspace crates it may depend on (directly)
ALLOWED = {
    "freshet-storage": set(),
    "freshet-ingest": {"freshet-storage"},
    "freshet-process": {"freshet-storage"},
    "freshet-query": {"freshet-storage"},
    "freshet-reports": {"freshet-query", "freshet-storage"},
    "freshet": {"freshet-storage", "freshet-ingest", "freshet-process", "freshet-query", "freshet-reports"},
    "freshet-tests": None,  # anything
}
# crate -> outside crates it must not reach, even transitively
FORBIDDEN = {
    "freshet-storage": {"rumqttd", "rumqttc", "deltalake", "deltalake-core", "datafusion", "plotters", "lambda_runtime"},
    "freshet-ingest": {"deltalake", "deltalake-core", "datafusion", "plotters", "lambda_runtime"},
    "freshet-process": {"rumqttd", "rumqttc", "plotters"},
    "freshet-query": {"rumqttd", "rumqttc", "plotters", "lambda_runtime"},
    "freshet-reports": {"rumqttd", "rumqttc", "lambda_runtime"},
}

host = next(l.split()[1] for l in subprocess.check_output(["rustc", "-vV"], text=True).splitlines()
            if l.startswith("host:"))
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host]))
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
members = {packages[i]["name"]: i for i in meta["workspace_members"]}
problems = []

for name, pid in members.items():
    if name not in ALLOWED:
        problems.append(f"{name}: not in the dependency table of scripts/check-deps.py")
        continue
    direct = {packages[d["pkg"]]["name"] for d in nodes[pid]["deps"]
              if any(k["kind"] in (None, "build") for k in d["dep_kinds"])}
    allowed = ALLOWED[name]
    if allowed is not None:
        for dep in sorted(direct & set(members) - allowed):
            problems.append(f"{name} must not depend on {dep}")
    # transitive closure over normal dependencies
    seen, todo = set(), [pid]
    while todo:
        cur = todo.pop()
        for d in nodes[cur]["deps"]:
            if d["pkg"] not in seen and any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
                seen.add(d["pkg"])
                todo.append(d["pkg"])
    reached = {packages[i]["name"] for i in seen}
    for bad in sorted(reached & FORBIDDEN.get(name, set())):
        problems.append(f"{name} reaches {bad}, which it must not know about")

if problems:
    print("dependency direction violated:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"dependency direction ok ({len(members)} crates)")
