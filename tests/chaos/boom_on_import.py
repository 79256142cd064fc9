"""A module that fails at import with something other than ImportError (hostile-input tests:
a job row may name it; only a worker process should ever try to import it)."""

raise RuntimeError("boom_on_import refuses to be imported")
