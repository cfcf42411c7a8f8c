"""Lead names and units as real WFDB headers write them (tests/data; data-notes.md §1.6, §4.4)."""
import pytest

from ecg_core.data.leads import LEADS, canonical_lead, unit_to_uV


def test_leads_are_the_standard_order():
    assert LEADS == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.mark.parametrize("lead", LEADS)
def test_canonical_names_map_to_themselves_in_any_case(lead):
    assert canonical_lead(lead) == lead
    assert canonical_lead(lead.lower()) == lead   # PTB s0010_re: i, ii, ..., avr, v1
    assert canonical_lead(lead.upper()) == lead
    assert canonical_lead(f" {lead} ") == lead     # MIMIC DB 041s pads descriptions with spaces


@pytest.mark.parametrize("name, lead", [
    ("i", "I"), ("AVR", "aVR"), ("avr", "aVR"), ("aVf", "aVF"), ("v6", "V6"),
    ("Lead II", "II"), ("lead_aVL", "aVL"), ("LEAD-V3", "V3"), ("ECG II", "II"), ("ECG_V1", "V1"),
    ("ECG lead aVR", "aVR"), ("EKG I", "I"),
    ("DI", "I"), ("DII", "II"), ("DIII", "III"), ("D1", "I"), ("d2", "II"),
    ("MLII", "II"),   # MIT-BIH 100: modified (Mason-Likar) lead II
    ("MCL1", "V1"),   # MIMIC DB 03700181: modified chest lead 1
])
def test_spellings_map_to_the_canonical_lead(name, lead):
    assert canonical_lead(name) == lead


@pytest.mark.parametrize("name", [
    "V",              # MIMIC a103l/041s/3000003_0003: a chest lead that does not say which
    "ABP", "PAP", "PLETH", "RESP",
    "ECG 1", "ECG", "sig 0, fmt 8", "sig 1, fmt 516", "",
    "vx", "vy", "vz",  # Frank leads of PTB s0010_re
    "V4R", "V7", "-aVR", "aVR inverted", "V1-V2", "1", "II'",
])
def test_other_names_are_not_leads(name):
    assert canonical_lead(name) is None


@pytest.mark.parametrize("unit, factor", [
    ("mV", 1000.0), ("mv", 1000.0), ("MV", 1000.0), ("millivolt", 1000.0), ("millivolts", 1000.0),
    ("uV", 1.0), ("uv", 1.0), ("\u00b5V", 1.0), ("\u03bcV", 1.0), ("microvolt", 1.0), (" uV ", 1.0),
    ("V", 1e6), ("volt", 1e6), ("nV", 1e-3),
])
def test_voltage_units(unit, factor):
    assert unit_to_uV(unit) == factor


@pytest.mark.parametrize("unit", ["mmHg", "NU", "", "%", "bpm", "mmV", "kV", "degC"])
def test_other_units_are_not_voltages(unit):
    assert unit_to_uV(unit) is None
