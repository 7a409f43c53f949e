"""The platform's Prometheus figures: ``collector`` (hosts, apps, instances, Celery queues, computed
at scrape time in a bounded number of queries), ``requests`` (API request counters every web
process adds to in Redis) and ``views`` (``/metrics``, for platform admins and scrape tokens)."""
