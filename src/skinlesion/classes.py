"""The ISIC 2019 class table: the one place that names the diagnoses."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionClass:
    code: str
    name: str
    risk: str  # "malignant", "pre-malignant" or "benign"


CLASSES = (
    LesionClass("MEL", "Melanoma", "malignant"),
    LesionClass("NV", "Melanocytic nevus", "benign"),
    LesionClass("BCC", "Basal cell carcinoma", "malignant"),
    LesionClass("AK", "Actinic keratosis", "pre-malignant"),
    LesionClass("BKL", "Benign keratosis", "benign"),
    LesionClass("DF", "Dermatofibroma", "benign"),
    LesionClass("VASC", "Vascular lesion", "benign"),
    LesionClass("SCC", "Squamous cell carcinoma", "malignant"),
)
CODES = tuple(c.code for c in CLASSES)
BY_CODE = {c.code: c for c in CLASSES}
# The official ground truth has a ninth column for the challenge's "unknown" test class;
# no training image carries it.
UNKNOWN_CODE = "UNK"
# ISIC 2018 (task 3, HAM10000) had seven classes: its AKIEC, actinic keratosis or intraepithelial carcinoma
# (Bowen's disease), became AK and SCC in 2019. Its test set is the usual external benchmark.
ISIC2018_CODES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2018_MERGED = {"AKIEC": ("AK", "SCC")}


def lesion_class(code: str) -> LesionClass:
    """Return the class with this code, or fail with the choices."""
    try:
        return BY_CODE[code]
    except KeyError:
        raise ValueError(f"unknown class {code!r}; choose from {', '.join(CODES)}") from None


def parse_codes(text: str) -> tuple[str, ...]:
    """Turn 'MEL,NV,BCC' into validated codes in the table's order."""
    wanted = {part.strip().upper() for part in text.split(",") if part.strip()}
    for code in wanted:
        lesion_class(code)
    return tuple(code for code in CODES if code in wanted)
