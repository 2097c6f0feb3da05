"""tracerctl: the control client, its rendering, and one module per local command."""
