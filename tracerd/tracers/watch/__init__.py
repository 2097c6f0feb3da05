"""The watch tracer: its backend, the supervisor in tracerd, the watcher process."""
