"""The long-running side: a small loop (loop.py) over the host and serving components, and what they report
through (notify.py: systemd's notify socket; metrics.py: the node_exporter textfile)."""
