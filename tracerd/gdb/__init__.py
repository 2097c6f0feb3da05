"""gdb: the MI transport, and the crash capture shared by the gdb and watch tracers."""
