"""The gallery: people, faces and vectors behind one interface (``backends``), stored in SQLite with
a PQ or HNSW index, or in PostgreSQL + pgvector; migration between them. Knows nothing of models."""
