"""The tlpipe pipeline definition, its CLI (`tlpipe`) and the local runner."""
