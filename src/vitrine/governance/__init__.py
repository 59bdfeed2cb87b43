"""Data governance (DataJuicer, PAPERS.md §2): the sieve baseline and juicing inside each sample.

    from vitrine.governance import govern
    juiced = govern(store, splits.train, mode="juice", source="grocery:...")   # store/governed/juice/v1
"""

from vitrine.governance.pipeline import MODES, govern, juice, sieve_set
from vitrine.governance.records import AuditEntry, GovernedSet, read_manifest
from vitrine.governance.saliency import SaliencyModel, crop
from vitrine.governance.sieve import sieve, sieve_scores
from vitrine.governance.text import TextCleaner, enhance

__all__ = ["MODES", "govern", "juice", "sieve_set", "AuditEntry", "GovernedSet", "read_manifest", "SaliencyModel", "crop", "sieve",
           "sieve_scores", "TextCleaner", "enhance"]
