"""Page-cache prewarm: model files read into the page cache at disk speed before vLLM loads them, residency proven.

One question per module (the step in warm.py calls the others in this order):
    targets.py    what to warm: files, directories, Hugging Face model ids (offline) -> files; the memory budget
    residency.py  how much of a file the page cache holds (cachestat(2), else mincore(2)); files whose residency
                  the kernel hides from this user are read in full
    reader.py     reading the files once, in parallel, with the design picked for the storage under them
    mlock.py      keeping the warmed pages resident (mmap + mlock) until released
    libc.py       the ctypes calls (mmap, munmap, mincore, mlock, cachestat) Python's mmap module cannot make
    warm.py       the step: resolve -> budget -> residency before -> read -> residency after -> lock; its result

The ``prewarm`` command (commands/prewarm.py), the daemon and the serve unit call ``warm.prewarm``.
"""
