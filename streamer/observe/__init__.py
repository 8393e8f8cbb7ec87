"""Every runtime metric: one recorder (stats.py) and one Prometheus exporter (prometheus.py), for run and serve."""
