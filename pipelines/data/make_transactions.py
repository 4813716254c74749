"""Generate transactions.csv: card transactions for 12 accounts, with duplicates and bad rows.

    python pipelines/data/make_transactions.py
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

MERCHANTS = {"grocery": (5, 180), "fuel": (20, 110), "travel": (80, 1900), "dining": (8, 140), "utilities": (30, 260)}


def main(rows: int = 600, seed: int = 1234, out: Path | None = None) -> None:
    rng = random.Random(seed)
    accounts = [f"ACC-{n:03d}" for n in range(1, 13)]
    weights = [rng.uniform(0.3, 3.0) for _ in accounts]
    start = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
    records = []
    for i in range(rows):
        category = rng.choice(list(MERCHANTS))
        low, high = MERCHANTS[category]
        amount = round(rng.uniform(low, high), 2)
        if rng.random() < 0.05:
            amount = -amount  # a refund
        records.append([
            f"T{100000 + i}",
            rng.choices(accounts, weights)[0],
            (start + dt.timedelta(minutes=17 * i)).isoformat().replace("+00:00", "Z"),
            category,
            f"{amount:.2f}",
            "EUR",
        ])
    # the card processor resent some transactions: exact duplicates the dedupe step removes
    for i in rng.sample(range(rows), 15):
        records.insert(i + 1, list(records[i]))
    records[33][4] = "12,50"      # decimal comma: not a float → quarantined at the source
    records[321][2] = "yesterday"  # not a timestamp
    out = out or Path(__file__).with_name("transactions.csv")
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["txn_id", "account_id", "booked_at", "category", "amount", "currency"])
        writer.writerows(records)


if __name__ == "__main__":
    main()
