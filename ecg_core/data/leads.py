"""Canonical 12-lead names and voltage units.

Real WFDB headers spell the same lead many ways: ``I, II, ..., aVR, V1`` in the PhysioNet/CinC Challenge
files, ``i, ii, ..., avr, v1`` in PTB ``s0010_re``, ``MLII`` in the MIT-BIH Arrhythmia Database (``100``),
``II`` plus an unnamed chest lead ``V`` in MIMIC monitoring records (``a103l``, ``3000003_0003``), ``MCL1`` in
MIMIC DB ``03700181`` (data-notes.md §1.6 "lead names vary in case", §4.4 "canonical order"). Everything
downstream works with the canonical names in :data:`LEADS`, in that order.

Unit strings vary too (``mV``, ``mv``, ``uV``, ``µV``; data-notes.md §0.1, §1.6). :func:`unit_to_uV` turns a
unit string into the factor to microvolts; what an *omitted* unit means (mV, per the WFDB header spec) is the
header reader's rule, not this module's.
"""
from __future__ import annotations

import re

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Normalised spelling (lower case, no separators) -> canonical lead.
_ALIASES: dict[str, str] = {lead.lower(): lead for lead in LEADS}
# Einthoven leads written DI/DII/DIII or D1/D2/D3 ("derivación", common in Spanish, French, Italian and
# Brazilian exports).
_ALIASES.update({"d1": "I", "di": "I", "d2": "II", "dii": "II", "d3": "III", "diii": "III"})
# Monitoring variants that record the same lead from torso electrodes: Mason-Likar limb leads (MIT-BIH
# "MLII") and the modified chest leads MCL1..MCL6 (positive electrode at the V1..V6 position; MIMIC "MCL1").
_ALIASES.update({"mli": "I", "mlii": "II", "mliii": "III"})
_ALIASES.update({f"mcl{k}": f"V{k}" for k in range(1, 7)})

# Words that only say "this is an ECG lead": "Lead II", "ECG II", "ECG lead aVR".
_FILLER = re.compile(r"^(?:ecg|ekg|lead)[\s_.:-]*")
_SEPARATORS = re.compile(r"[\s_.]+")


def canonical_lead(name: str) -> str | None:
    """Canonical name (an element of :data:`LEADS`) of a header's signal description, or ``None``.

    Case, surrounding whitespace, separators and the words "lead"/"ECG" are ignored: ``"i"``, ``"AVR"``,
    ``"Lead II"``, ``"ECG_V1"``, ``"DII"`` and ``"MLII"`` all map. ``None`` for anything that is not one of
    the 12 standard leads: names that do not say which lead they are (``"V"``, ``"ECG 1"``,
    ``"sig 0, fmt 8"``), other signals (``"ABP"``, ``"PLETH"``), Frank leads (``"vx"``), right-sided and
    posterior chest leads (``"V4R"``, ``"V7"``) and inverted leads (``"-aVR"``). A lead is never guessed.
    """
    s = name.strip().lower()
    if s.startswith("-"):
        return None
    while (stripped := _FILLER.sub("", s)) != s:
        s = stripped
    return _ALIASES.get(_SEPARATORS.sub("", s))


# Prefix of "V"/"volt" -> microvolts. The case of the prefix is ignored (nobody records megavolts: "MV" is
# a shouted mV). MICRO SIGN (U+00B5) and GREEK SMALL LETTER MU (U+03BC) are both written for micro.
_PREFIX_TO_UV: dict[str, float] = {
    "": 1e6, "m": 1e3, "milli": 1e3, "u": 1.0, "\u00b5": 1.0, "\u03bc": 1.0, "micro": 1.0,
    "n": 1e-3, "nano": 1e-3,
}


def unit_to_uV(unit: str) -> float | None:  # noqa: N802 (the unit is part of the name)
    """Factor that converts a value in ``unit`` to microvolts; ``None`` if ``unit`` is not a voltage.

    ``mV``/``mv``/``MV`` -> 1000, ``uV``/``µV``/``μV``/``microvolt`` -> 1, ``V``/``volt`` -> 1e6,
    ``nV`` -> 1e-3. ``mmHg``, ``NU``, ``%`` and the empty string give ``None``.
    """
    s = unit.strip().lower()
    for volt in ("volts", "volt", "v"):
        if s.endswith(volt) and s[: -len(volt)] in _PREFIX_TO_UV:
            return _PREFIX_TO_UV[s[: -len(volt)]]
    return None
