"""What ``z4j demo`` runs: a small shop's task modules (one per engine) and
the traffic that keeps them busy. Product code for the demo only; nothing of
the console or the collector imports it."""
