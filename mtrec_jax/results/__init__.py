"""Run outputs, provenance and (later) the results store."""
