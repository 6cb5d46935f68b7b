#!/usr/bin/env python3
"""Picks a small corpus: at most MAX_FILES files of SRC_DIR, chosen greedily by the coverage
edges each adds (each file's edges read from a libFuzzer merge of that file alone), copied to
OUT_DIR. Run it on the output of `cargo fuzz cmin`, which keeps every file that adds an edge
(hundreds), to keep the committed corpus at a few dozen files.

usage: cover.py BINARY SRC_DIR OUT_DIR MAX_FILES
  BINARY: the built target, e.g. fuzz/target/x86_64-unknown-linux-gnu/release/pgoutput
"""
import os, shutil, subprocess, sys, tempfile
binary, src, out, cap = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
edges = {}
work = tempfile.mkdtemp()
for name in sorted(os.listdir(src)):
    d = os.path.join(work, "in"); e = os.path.join(work, "out"); ctl = os.path.join(work, "ctl")
    for p in (d, e):
        shutil.rmtree(p, ignore_errors=True); os.makedirs(p)
    shutil.copy(os.path.join(src, name), d)
    if os.path.exists(ctl):
        os.remove(ctl)
    subprocess.run(["nice", "-n", "15", binary, "-merge=1", "-use_counters=0", "-merge_control_file=" + ctl, e, d],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cov = set()
    for line in open(ctl):
        if line.startswith("FT "):
            cov.update(line.split()[2:])
    edges[name] = cov
union = set().union(*edges.values())
covered, chosen = set(), []
while len(chosen) < cap:
    best = max(edges, key=lambda n: (len(edges[n] - covered), -os.path.getsize(os.path.join(src, n))))
    gain = len(edges[best] - covered)
    if gain == 0:
        break
    chosen.append(best); covered |= edges[best]
os.makedirs(out, exist_ok=True)
for n in chosen:
    shutil.copy(os.path.join(src, n), out)
print(f"{len(chosen)} of {len(edges)} files keep {len(covered)} of {len(union)} edges")
