"""OpenMetrics for a fleet: the registry (:mod:`.registry`) and where it is served (:mod:`.serve`).

See docs/fleet.md, "Fleet: journald, structured syslog, metrics".
"""
