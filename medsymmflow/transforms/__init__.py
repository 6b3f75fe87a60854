"""MONAI transforms between class labels and SymmFlow code masks (array forms and ``...d`` dictionary twins)."""

from medsymmflow.transforms.array import (
    ClassToCodeMask,
    CodeMaskToClass,
    LabelMapToCodeMask,
    UniformDequantize,
    resolve_codebook,
)
from medsymmflow.transforms.dictionary import (
    ClassToCodeMaskD,
    ClassToCodeMaskd,
    ClassToCodeMaskDict,
    CodeMaskToClassD,
    CodeMaskToClassd,
    CodeMaskToClassDict,
    LabelMapToCodeMaskD,
    LabelMapToCodeMaskd,
    LabelMapToCodeMaskDict,
    UniformDequantizeD,
    UniformDequantized,
    UniformDequantizeDict,
)

__all__ = [
    "ClassToCodeMask",
    "ClassToCodeMaskD",
    "ClassToCodeMaskDict",
    "ClassToCodeMaskd",
    "CodeMaskToClass",
    "CodeMaskToClassD",
    "CodeMaskToClassDict",
    "CodeMaskToClassd",
    "LabelMapToCodeMask",
    "LabelMapToCodeMaskD",
    "LabelMapToCodeMaskDict",
    "LabelMapToCodeMaskd",
    "UniformDequantize",
    "UniformDequantizeD",
    "UniformDequantizeDict",
    "UniformDequantized",
    "resolve_codebook",
]
