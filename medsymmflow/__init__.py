"""medsymmflow: Symmetrical Flow Matching (SymmFlow / MedSymmFlow) on MONAI.

Importing the package stays light: heavy optional parts (diffusers, medmnist, torchdiffeq) are
imported only where they are used.
"""

from medsymmflow.codes import ClassCodebook, CodebookDecoding

__version__ = "0.1.0"

__all__ = ["ClassCodebook", "CodebookDecoding", "__version__"]
