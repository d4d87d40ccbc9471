"""Operations: Prometheus metrics, the /metrics, /health and /ready server, and JSON log lines."""
