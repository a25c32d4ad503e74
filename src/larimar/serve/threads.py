"""Which of the server's threads run torch on several cores.

torch's CPU ops run on OpenMP, and each Python thread that runs a parallel op gets a team of
OpenMP threads of its own, which lives as long as that thread. Once all teams hold more threads
than the machine has cores, libgomp stops spinning at its barriers, and every small op then pays
a sleep and a wake-up. On 2 cores, beside a live thread that had loaded the model, 8-row decoding
steps took 1.2-1.4x as long (`benchmarks/thread_teams.py`). So in the server only the ask loop's
thread runs torch on several cores; the request threads (creating, writing, forgetting, scoring,
loading memories) and the loader run it on one: one request that created a memory on every core
left a team behind, and batched asks ran 1.5x slower.
"""

from __future__ import annotations

import torch

CORES = torch.get_num_threads()
"""torch's thread count when the server's modules load (torch's default unless the user set one)."""


def one_core() -> None:
    """Run the calling thread's torch ops on one core from now on."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def all_cores() -> None:
    """Run the calling thread's torch ops on `CORES` threads from now on."""
    if torch.get_num_threads() != CORES:
        torch.set_num_threads(CORES)
