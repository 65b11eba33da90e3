"""Where every stage's records live on disk: folder names, atomic shards, growing folders."""
