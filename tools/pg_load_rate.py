"""The PostgreSQL loader's rate: one bench run's records (a SQLite Landscape) loaded into
PostgreSQL through ``auditlog.loader``, in segment-sized transactions, by COPY and by executemany.

    python tools/pg_load_rate.py BENCH_LANDSCAPE.db POSTGRES_URL      (the URL's tables are emptied)
"""
import sys, time, sqlite3
from elspeth_beam.auditlog import loader, records
from elspeth_beam.landscape.store import LandscapeStore
src = sqlite3.connect(sys.argv[1])
tables = {}
for t in records.EVENT_TABLES:
    cols = [c.name for c in t.columns]
    rows = src.execute(f"SELECT {', '.join(cols)} FROM {t.name}").fetchall()
    if "is_terminal" in cols:
        k = cols.index("is_terminal"); rows = [r[:k] + (bool(r[k]),) + r[k + 1:] for r in rows]
    tables[t.name] = rows
total = sum(map(len, tables.values()))
store = LandscapeStore(sys.argv[2])
for mode in ("copy", "executemany"):
    with store.engine.begin() as c:
        for t in reversed(records.EVENT_TABLES): c.exec_driver_sql(f'DELETE FROM "{t.name}"')
    loader._COPY_FROM = 200 if mode == "copy" else 10**12
    t0 = time.perf_counter()
    for name, rows in tables.items():
        for i in range(0, len(rows), 20000):
            loader.load_records(store.engine, {name: records.to_columns(rows[i:i + 20000])})
    dt = time.perf_counter() - t0
    print(f"{mode}: {total} records in {dt:.1f} s = {total / dt:,.0f} records/s", flush=True)
