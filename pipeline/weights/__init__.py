"""Teacher and student weights shared by the stages: finding, loading and (later) downloading weight files."""
