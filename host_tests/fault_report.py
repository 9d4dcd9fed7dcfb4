"""The fault suite's figures, gathered into one report.

A fault test calls `record(name, ...)` with what it measured; at the end of the pytest
session `write()` (called from conftest.py) turns this session's records into
`build/fault-report.json` and `build/fault-report.md` (git-ignored: a run's output, not
source). The README's "Reliability" section summarises a run of it.

Standard figures (leave out what a test does not measure):
  sent          feed-data events the firmware created (message_ids)
  lost          events never in the cloud's ledger (must be 0)
  applied_twice commands applied more than once (must be 0)
  crashes       firmware tracebacks or unexpected exits (must be 0)
  detect_s      seconds from the fault to the firmware noticing it (max over repeats)
  recover_s     seconds from the fault's end to data flowing again (max over repeats)
  faults        how many times the fault was injected
plus `notes` (one line) and any other figure the test names itself.
"""
import datetime
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("UGATE_FAULT_REPORT_DIR", os.path.join(ROOT, "build"))
MUST_BE_ZERO = ("lost", "applied_twice", "crashes")
COLUMNS = ("faults", "sent", "lost", "applied_twice", "crashes", "detect_s", "recover_s")

_records = []


def record(name, **figures):
    """Keep one test's figures for the report (also printed, for -s runs)."""
    for k in MUST_BE_ZERO:
        if k in figures and not isinstance(figures[k], int):
            raise TypeError("%s must be a count" % k)
    rec = {"test": name}
    rec.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()})
    _records.append(rec)
    print("fault-report:", json.dumps(rec))
    return rec


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "%.2f" % v
    return str(v)


def write(out=OUT):
    """Write this session's records (nothing when no fault test ran); returns the .md path."""
    if not _records:
        return None
    os.makedirs(out, exist_ok=True)
    doc = {"written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "records": _records}
    with open(os.path.join(out, "fault-report.json"), "w") as f:
        json.dump(doc, f, indent=1)
    lines = ["# Fault suite report", "", "Written %s by `./deploy.sh test` (pytest -m fault selects"
             " only this suite). Lost, applied twice and crashes must be 0." % doc["written"], "",
             "| test | " + " | ".join(COLUMNS) + " | other figures |",
             "|---|" + "---|" * len(COLUMNS) + "---|"]
    for r in _records:
        other = ", ".join("%s=%s" % (k, _cell(v)) for k, v in r.items()
                          if k not in COLUMNS and k not in ("test", "notes"))
        if r.get("notes"):
            other = (other + "; " if other else "") + r["notes"]
        lines.append("| %s | %s | %s |" % (r["test"], " | ".join(_cell(r.get(c)) for c in COLUMNS), other))
    totals = {k: sum(r.get(k, 0) for r in _records) for k in ("faults", "sent") + MUST_BE_ZERO}
    lines += ["", "Totals: " + ", ".join("%s %d" % kv for kv in totals.items()), ""]
    path = os.path.join(out, "fault-report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
