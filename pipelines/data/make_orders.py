"""Generate orders.csv: realistic orders with a few deliberately bad rows (seeded, reproducible).

    python pipelines/data/make_orders.py
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

REGIONS = ["north", "south", "east", "west"]
PRODUCTS = {"widget": 12.5, "gadget": 49.99, "gizmo": 129.0, "sprocket": 3.75, "flux-capacitor": 899.0}
CUSTOMERS = [f"C{n:04d}" for n in range(1, 61)]


def main(rows: int = 300, seed: int = 4711) -> None:
    rng = random.Random(seed)
    out = Path(__file__).with_name("orders.csv")
    lines: list[list[str]] = []
    day = dt.date(2026, 1, 5)
    for i in range(rows):
        product = rng.choice(list(PRODUCTS))
        lines.append([
            str(10_000 + i),
            rng.choice(CUSTOMERS),
            rng.choice(REGIONS),
            product,
            str(rng.choice([1, 1, 2, 3, 5, 8, 12])),
            f"{PRODUCTS[product] * rng.uniform(0.9, 1.1):.2f}",
            f"{rng.choice([0, 0, 0, 5, 10]):.2f}",
            (day + dt.timedelta(days=i // 4)).isoformat(),
        ])
    # deliberately bad rows, each a different failure the audit must explain
    lines[17][5] = "nan"                    # NaN price: no canonical form → quarantined at the source
    lines[42][4] = "three"                  # not an integer → schema coercion fails
    lines[99][7] = "2026-02-30"             # impossible date
    lines[150][4] = "0"                     # zero quantity → the pricing transform divides by zero
    lines[151][4] = "0"
    lines[230][5] = ""                      # missing price
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "customer", "region", "product", "quantity", "unit_price", "discount", "order_date"])
        for i, line in enumerate(lines):
            if i == 64:
                handle.write(f"{line[0]},{line[1]},{line[2]},oops,extra,fields,here,1,2\n")  # malformed line
                continue
            if i == 200:
                handle.write(f"{line[0]},{line[1]}\n")  # truncated line
                continue
            writer.writerow(line)


if __name__ == "__main__":
    main()
