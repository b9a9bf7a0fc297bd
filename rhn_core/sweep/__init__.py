"""Sweeps: grids of training runs as one command, run locally or on Slurm, tracked in the run database.

``grid`` expands swept keys into runs, ``state`` reads what the database knows of
them, ``runner`` runs one as a child process (checkpointing on a signal),
``executors`` runs many (local processes, or a Slurm job array via submitit) and
``cli`` is the ``rhn-sweep`` command (``python -m rhn_core.sweep``).
"""
