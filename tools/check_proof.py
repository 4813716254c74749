"""Check an elspeth-beam row proof: python check_proof.py PROOF.json ROOT (standard library only).

Every record's text must climb its audit path (RFC 6962 sha256, RFC 9162 2.1.3) to its
table's root, and that table's entry to ROOT, the run's digest root as you kept it.
Exit 0 if all do, 1 otherwise.
"""
import hashlib
import json
import sys


def climb(text, index, size, path):
    """The root hex that ``path`` leads the leaf H(0x00 || text) to, or None if it cannot."""
    fn, sn, r = index, size - 1, hashlib.sha256(b"\0" + text.encode()).digest()
    if not 0 <= index < size:
        return None
    for p in map(bytes.fromhex, path):
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\1" + p + r).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\1" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return r.hex() if sn == 0 else None


def main(proof_file, root):
    with open(proof_file, encoding="utf-8") as f:
        proof = json.load(f)
    root, good, bad = root.strip().lower(), 0, 0
    for name, table in proof["tables"].items():
        entry = json.loads(table["entry"])
        reached = climb(table["entry"], table["index"], proof["tables_in_run"], table["path"]) if entry["table"] == name else None
        for record in table["records"]:
            ok = reached == root and climb(record["record"], record["index"], entry["count"], record["path"]) == entry["root"]
            good, bad = good + ok, bad + (not ok)
            print("ok  " if ok else "FAIL", name, record["key"])
    print(f"{good} record(s) reach {root}, {bad} do not")
    return 0 if good and not bad else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]) if len(sys.argv) == 3 else __doc__)
