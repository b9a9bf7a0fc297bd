"""Data: the corpus readers and BPTT batching (``readers``, the lower layer) and the
preparation of enwik8 / text8 / PTB files (``fetch``, built on the readers)."""
