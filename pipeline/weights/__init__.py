"""Teacher and student weights shared by the stages: finding, loading and downloading weight files."""
