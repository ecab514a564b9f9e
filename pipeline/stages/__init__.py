"""The stage graph and its stamps: what each stage depends on and its key (`graph`), and the stamp files that let
make re-run exactly the stale stages (`stamps`). Not ground floor: the graph reads every stage's config."""
