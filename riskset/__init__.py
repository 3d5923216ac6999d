"""riskset: harm reduction assessment from a worker's own words.

>>> import riskset
>>> a = riskset.assess("She just got out of jail and plans to use tonight, alone.")
>>> a.overdose_risk.level
"""

from .assessment import InputError, assess, assess_findings, assess_many
from .knowledge import load as knowledge
from .models import Assessment, Finding, Level, Status
from .reading import load, read

__all__ = [
    "Assessment",
    "Finding",
    "InputError",
    "Level",
    "Status",
    "assess",
    "assess_findings",
    "assess_many",
    "knowledge",
    "load",
    "read",
]
__version__ = "0.1.0"
