"""The worker process: arq settings (`main`) and thin jobs that take ids, load state from
Postgres and call into `relay`: polling (`polling`), delivery and its sweeper (`delivery`),
retention (`retention`), store outages (`outages`) and the process's GC tuning (`runtime`).

It may import any stage of `relay` except the cli; nothing in `relay` imports it.
"""
