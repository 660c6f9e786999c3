"""The book machinery: :mod:`.chapter` (the one module notebooks import), :mod:`.runner`
(papermill, content hashes, ``bus-paper run`` and ``bus-paper book``), :mod:`.pages` (model card,
reproducibility page, landing-page findings), :mod:`.boxes` (each chapter's rerun box, hidden
code, run records), :mod:`.format` (reading result files, one number format). Layers inside:
runner > pages > boxes > format; chapter stands alone.
"""
