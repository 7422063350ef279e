"""The long-running process: settings, the daemon loop, the HTTP listener, leadership."""
