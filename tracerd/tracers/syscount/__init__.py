"""The syscount tracer: system calls counted in the kernel by one shared bpftrace (docs/syscount.md)."""
