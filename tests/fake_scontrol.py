#!/usr/bin/env python3
"""A stand-in for Slurm's scontrol (show node / update nodename=…), state in $FAKE_SLURM_STATE (JSON).

Prints ``show node`` the way scontrol 22.05 does (fields on indented lines, ``Reason=… [user@time]``), and
appends each argv to the state's "calls" so a test sees exactly what the agent asked.
"""

import json
import os
import sys

path = os.environ["FAKE_SLURM_STATE"]
with open(path) as f:
    st = json.load(f)
argv = sys.argv[1:]
st["calls"].append(argv)
if st.get("fail"):
    print(st["fail"], file=sys.stderr)
    sys.exit(1)
if argv[:2] == ["show", "node"]:
    print(f"NodeName={argv[2]} Arch=x86_64 CoresPerSocket=1 ")
    print("   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.10")
    print(f"   State={st['state']} ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A")
    if st.get("reason"):
        print(f"   Reason={st['reason']} [{st.get('by', 'root')}@2026-12-02T06:00:00]")
elif argv and argv[0] == "update":
    kv = dict(a.split("=", 1) for a in argv[1:])
    base = st["state"].split("+")[0]
    if kv.get("state") == "drain":
        st["state"], st["reason"], st["by"] = base + "+DRAIN", kv["reason"], "root"
    elif kv.get("state") == "resume":
        st["state"], st["reason"] = base, ""
with open(path, "w") as f:
    json.dump(st, f)
