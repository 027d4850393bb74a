"""Project folder, run registry (SQLite), background jobs, registries and small shared helpers."""
