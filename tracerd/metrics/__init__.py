"""OpenMetrics for a fleet: the registry (:mod:`.registry`) and where it is served (:mod:`.serve`).

See README, "Fleet: journald, structured syslog, metrics".
"""
