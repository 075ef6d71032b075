"""The engine: what changes project state, and when (queue, rounds, the round policy, jobs, labeling, simulation)."""
