"""The engine: epochs, probe, claim, submit, resolve, poll and last look, recorded as steps."""
