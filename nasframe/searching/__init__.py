"""The search loop: the ``Strategy`` protocol and registry, the one ``Executor``, the weight
updates strategies share, the memory budget, and ``nf.search`` (``api``). Strategies are found
by registry (entry points), never imported here."""
