"""Teaching helpers for the notebooks: simulations and figures, one module per topic.

    style       one figure style: a colour per method, human axis labels, the paper's reference line
    degenerate  GRPO's degenerate groups on a drifting prompt population          (notebook 02)
    tracking    the Beta value tracker following non-stationary prompts           (notebook 03)
    variance    the advantage variance of SPO, GRPO and an oracle baseline        (notebook 04)
    sampling    what prioritised sampling draws                                   (notebook 05)
    sync        group synchronisation barriers vs a single stream                 (notebook 08)
    runs        figures of training runs from the trainer's metrics rows          (notebooks 01, 06, 07)
    notebook    run profiles, set-up and short training runs for the notebooks

Each topic module holds its compute functions (they return arrays or DataFrames) and the plot
functions that draw that data; a plot function never runs a simulation itself.

This package imports the core library (:mod:`spo_lab.tracker`, :mod:`spo_lab.advantages`,
:mod:`spo_lab.sampler`, :mod:`spo_lab.metrics`, ...) and never the reverse: nothing in ``spo_lab``
outside ``spo_lab.teaching`` imports it, so the library stays usable without matplotlib figures.
"""
