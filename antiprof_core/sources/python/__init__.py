"""CPython frames for the BPF sampler: which processes run CPython (``python_processes``, read by
the BPF walk), the names of the frames it records, and how they take the place of the
interpreter's native frames in a stack. The reading of CPython's memory itself is in
``antiprof_core.symbolize.python``."""
