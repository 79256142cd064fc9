"""oban_pro: an Oban-compatible PostgreSQL job engine that runs jobs on worker processes."""
