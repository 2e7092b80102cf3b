"""``hs-bench``: throughput of exported engines and their peers, per stage, in one process."""
