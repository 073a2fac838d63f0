"""Target spectra and the loss of a measured spectrum against the target.

The loss is the one of Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021), as written in AgBONN's
``BO/BO.py`` and checked against the measured losses in ``shared/data/agbonn`` (Liang et al. 2021):

    loss = 1 - delta * cos(minmax(A), minmax(target))
    delta = 0 if max(A) > a_high;  1 if a_low <= max(A) <= a_high;  max(A) / a_low if 0 < max(A) < a_low

Only shape (through the cosine) and amplitude (through delta) count.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import interp1d

# a column header naming transmittance or reflectance, in the words spectrometer software of several
# languages uses: %T, T%, T (%), R%, transmittance/transmission/Transmissionsgrad/transmitancia,
# reflectance/réflectance/Reflexion/reflexión, Durchlässigkeit
_NOT_ABSORBANCE = re.compile(
    r"(^|[^a-z])(%\s*[tr]|[tr]\s*(\(\s*%\s*\)|%))([^a-z]|$)|transmi[st]|r[eé]fl[eé]c|reflex|durchl[aä]ssig"
)


def wavelength_grid(start_nm: float = 380.0, stop_nm: float = 800.0, step_nm: float = 1.0) -> np.ndarray:
    n = int(round((stop_nm - start_nm) / step_nm)) + 1
    return np.linspace(start_nm, stop_nm, n)


class TargetFileError(ValueError):
    pass


def read_target_text(path: str | Path) -> str:
    """A target file's text as it is parsed and stored: UTF-8 (a BOM dropped), any byte that is not
    (a Windows code page's degree sign or umlaut in a header) replaced, since only the numbers count."""
    try:
        return Path(path).read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise TargetFileError(f"{path}: cannot read the target spectrum ({exc.strerror})") from exc


def read_target_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A two-column table (wavelength_nm, absorbance), sorted by wavelength.

    What spectrometer software and spreadsheets write is accepted: columns split by commas,
    semicolons, tabs or spaces (with semicolons, tabs or spaces a decimal comma is read as a point; with
    commas only inside double quotes, as ``"380","0,0389"``, and a row such as ``380,0,0389`` that may be
    either is refused unless a header or decimal points elsewhere settle it), ``#``
    comments, and a header or metadata block before the first row of numbers (an OceanView export's
    ``>>>>>Begin Spectral Data<<<<<`` block), and text after the last row of numbers (its ``>>>>>End
    Spectral Data<<<<<``). Columns after the second are ignored; a text line between rows of numbers
    is an error. Rows whose absorbance is NaN or infinite beyond both ends of the others (an absorbance
    export's dark UV pixels) are dropped; one between two readings is an error."""
    return parse_target_text(read_target_text(path), path)


def _looks_swapped(data: np.ndarray) -> bool:
    """Absorbance first, wavelengths second: the second column distinct values in the UV-Vis-NIR range
    (150-3300 nm), the first not, and within what a spectrometer reads as absorbance (-1 to 10)."""
    wl, a = data[:, 1], data[:, 0]

    def nm(col: np.ndarray) -> bool:
        return bool(np.all((col >= 150) & (col <= 3300)))

    return nm(wl) and len(np.unique(wl)) == len(wl) and not nm(a) and bool(np.all((a > -1) & (a < 10)))


def parse_target_text(text: str, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_target_csv` on a target file's text already read (``path`` names it in errors)."""
    lines = text.splitlines()
    rows: list[tuple[float, float]] = []
    row_lines: list[int] = []  # the file's line number of each row
    header: list[str] = []
    one_number: tuple[int, str] | None = None  # the first line that is a single number (a one-column file)
    comma_rows: list[tuple[int, str, int, bool]] = []  # line, text, fields split at commas, ambiguous
    footer: tuple[int, str] | None = None  # the first text line after the numbers (">>>>>End Spectral Data")
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        pair, n_fields, ambiguous = _read_row(text)
        if pair is None and not rows:
            header.append(text)
            if one_number is None and _is_one_number(text):
                one_number = (number, text)
        elif pair is None and not re.match(r"[-+.]?\d", text):
            footer = footer or (number, text)  # text after the numbers: a footer, if no numbers follow
        elif pair is None or footer is not None:
            bad_number, bad = (number, text) if pair is None else footer
            raise TargetFileError(
                f"{path}: line {bad_number} ({bad[:60]!r}) is not two numbers, wavelength_nm and absorbance"
            )
        else:
            rows.append(pair)
            row_lines.append(number)
            if n_fields:
                comma_rows.append((number, text, n_fields, ambiguous))
    if len(rows) < 2:
        seen = f"; it starts with {header[0][:60]!r}" if header and not _is_one_number(header[0]) else ""
        one = (
            f"; its rows hold one number each (line {one_number[0]}: {one_number[1][:60]!r}), but a target "
            "needs two columns, wavelength_nm and absorbance"
            if one_number else ""
        )
        raise TargetFileError(
            f"{path}: a target needs at least two rows of two numbers, wavelength_nm and absorbance, "
            f"found {len(rows)}{seen}{one}"
        )
    _check_decimal_commas(comma_rows, _comma_columns(header[-1]) if header else None, path)
    data = np.array(rows, dtype=float)
    finite = np.isfinite(data).all(axis=1)
    if not finite.all() and finite.sum() >= 2 and np.isfinite(data[:, 0]).all():
        # NaN or infinite absorbance only beyond both ends of the rest (an absorbance export's dark UV
        # pixels): no data there, and no gap inside; the grid check says if the grid needs them
        inner = (data[:, 0] >= data[finite, 0].min()) & (data[:, 0] <= data[finite, 0].max())
        if finite[inner].all():
            data, row_lines = data[finite], [n for n, ok in zip(row_lines, finite, strict=True) if ok]
            finite = finite[finite]
    if not finite.all():
        first = int(np.argmin(finite))
        raise TargetFileError(
            f"{path}: the target holds NaN or infinite values ({int((~finite).sum())} row{'s' if (~finite).sum() > 1 else ''}, the first on line "
            f"{row_lines[first]}: {lines[row_lines[first] - 1].strip()[:60]!r}); remove those rows or fill them in"
        )
    said = header[-1].lower() if header else ""  # the column names (metadata above may name a probe)
    if _NOT_ABSORBANCE.search(said):
        raise TargetFileError(
            f"{path}: its header says transmittance or reflectance ({header[-1][:60]!r}), but a target is "
            "absorbance, whose peaks are the transmittance's dips: convert it (A = 2 - log10(%T)) or export "
            "absorbance"
        )
    if re.search(r"(^|[^a-z])(ev|electron ?volts?)([^a-z]|$)", said):
        raise TargetFileError(
            f"{path}: its header gives the axis in electronvolts ({header[-1][:60]!r}); a target's first column "
            "is the wavelength in nm: convert it (nm = 1239.84 / eV)"
        )
    if _looks_swapped(data):
        raise TargetFileError(
            f"{path}: the columns look swapped: the first holds {data[:, 0].min():.3g}-{data[:, 0].max():.3g}, "
            f"the second {data[:, 1].min():.4g}-{data[:, 1].max():.4g}; a target is wavelength_nm first, then "
            "absorbance"
        )
    metadata = " ".join(header).lower()
    first = _first_column(said)  # the x axis's name: the other columns may name anything (epsilon, cm^-1)
    wl = data[:, 0]
    pixels = bool(np.all(wl == np.round(wl)) and wl.min() in (0, 1) and np.all(np.abs(np.diff(np.sort(wl))) == 1))
    if (pixels or re.fullmatch(r"pixels?(\s*(#|no\.?|nr\.?|number|index))?", first)
            or re.search(r"x\s*axis mode:\s*pixel", metadata)):
        raise TargetFileError(
            f"{path}: its first column is pixel numbers ({wl.min():g}-{wl.max():g}), not wavelengths: export the "
            "spectrum with the x axis in nanometres (OceanView: XAxis mode Wavelengths)"
        )
    if re.search(r"angstr|\u00e5", first):
        raise TargetFileError(
            f"{path}: its header gives the axis in angstroms ({header[-1][:60]!r}); a target's first column is the "
            "wavelength in nm: convert it (nm = angstrom / 10)"
        )
    if re.search(r"wave ?numbers?|cm\s*(-|\^|\*\*)\s*-?1|1\s*/\s*cm|cm⁻¹", first):
        raise TargetFileError(
            f"{path}: its header gives the axis in wavenumbers ({header[-1][:60]!r}); a target's first column "
            "is the wavelength in nm: convert it (nm = 10^7 / wavenumber in cm^-1)"
        )
    if wl.max() < 100:  # no UV-Vis-NIR wavelength in nm is this short
        unit = ("metres (nm = 10^9 x m)" if wl.max() < 1e-4 else "micrometres (nm = 1000 x um)" if wl.max() <= 3
                else "some other unit")
        raise TargetFileError(
            f"{path}: its first column runs {wl.min():g}-{wl.max():g}, below any UV-Vis wavelength in nm: is it in "
            f"{unit}? A target's first column is the wavelength in nm"
        )
    order = np.argsort(data[:, 0], kind="stable")
    data = data[order]
    if np.any(same := np.diff(data[:, 0]) <= 0):
        i = int(np.argmax(same))
        line_a, line_b = sorted((row_lines[order[i]], row_lines[order[i + 1]]))
        raise TargetFileError(
            f"{path}: wavelengths must be distinct, but lines {line_a} and {line_b} both give {data[i, 0]:g} nm "
            f"({int(same.sum())} repeated in all): keep one row per wavelength"
        )
    if np.ptp(data[:, 1]) <= 0:
        raise TargetFileError(f"{path}: the target is flat; its shape cannot be compared")
    return data[:, 0], data[:, 1]


def _first_column(header: str) -> str:
    """The first column's name in a header line (lower case): split at commas, semicolons or tabs, else
    its first word."""
    parts = re.split(r"[,;\t]", header.strip())
    return parts[0].strip() if len(parts) > 1 else next(iter(header.split()), "")


def _check_decimal_commas(
    comma_rows: list[tuple[int, str, int, bool]], header_columns: int | None, path: str | Path
) -> None:
    """Rows split at commas into more than two fields with no decimal point, as ``380,0,0389``, may hold
    decimal commas (380 and 0.0389) or a third column (380, 0 and 389). They are read as columns only
    when the header line before the numbers names as many comma-separated columns, or, without such a
    header, when every row splits into as many fields and some row has decimal points
    (``300,0.1,0.01``); otherwise the file is refused rather than misread."""
    ambiguous = [row for row in comma_rows if row[3]]
    if not ambiguous:
        return
    if header_columns is not None:
        bad = next((row for row in ambiguous if row[2] != header_columns), None)
        why = f"but the header names {header_columns} columns" if bad else ""
    else:
        other = next((row for row in comma_rows if row[2] != ambiguous[0][2]), None)
        if other is not None:
            bad = ambiguous[0]
            why = f"but line {other[0]} ({other[1][:60]!r}) into {other[2]}"
        elif all(row[3] for row in comma_rows):
            bad = ambiguous[0]
            why = "with no decimal point in any row and no header naming the columns"
        else:
            bad = None
    if bad is None:
        return
    raise TargetFileError(
        f"{path}: line {bad[0]} ({bad[1][:60]!r}) splits into {bad[2]} fields at its commas {why}: "
        "commas both separate the columns and mark decimals, so the numbers cannot be told apart; "
        "save the file with semicolons or tabs as separators, or with decimal points"
    )


def _comma_columns(line: str) -> int | None:
    """How many columns a header line names if it is split at commas (None if it is not)."""
    if '"' in line:
        fields, delimiter = _csv_fields(line)
        return len(fields) if delimiter == "," else None
    if ";" in line or "\t" in line or "," not in line:
        return None
    return len(line.split(","))


def _outside_quotes(line: str) -> str:
    """The line with its double-quoted fields (and an unclosed one at the end) taken out."""
    return re.sub(r'"[^"]*"?', "", line)


def _may_be_decimal_commas(n_fields: int, unquoted: str) -> bool:
    """More than two comma fields, no decimal point and a comma between two digits: ``380,0,0389``."""
    return n_fields > 2 and "." not in unquoted and bool(re.search(r"\d,\d", unquoted))


def _csv_fields(line: str) -> tuple[list[str], str]:
    """A line with double quotes read as CSV, split at the semicolons, tabs, commas or spaces outside its
    quotes (in that order of preference), and the separator used."""
    bare = _outside_quotes(line)
    delimiter = next((d for d in ";\t," if d in bare), " ")
    return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), []), delimiter


def _is_one_number(line: str) -> bool:
    try:
        float(line.strip().strip('"').replace(",", "."))
    except ValueError:
        return False
    return True


def _read_row(line: str) -> tuple[tuple[float, float] | None, int, bool]:
    """The first two fields of a table row as numbers (or None: a header or a text line), how many
    fields the row has if it was split at commas (else 0), and whether those commas may also be decimal
    commas: more than two fields, no decimal point, and a comma between two digits outside quotes
    (``380,0,0389``; see :func:`_check_decimal_commas`).

    A row with double quotes is read as CSV, and a comma inside its quoted fields is a decimal comma
    (``"380","0,0389"``). A row with commas is read comma-separated; if that gives no two numbers and
    the row also splits on spaces, as ``400 0,123`` or ``400,5 0,123``, its commas are decimal commas,
    and so are the commas inside fields split by a comma and spaces, as ``400, 0,123`` (not 400 and 0)."""
    if '"' in line:
        fields, delimiter = _csv_fields(line)
        pair = _first_two([f.replace(",", ".") for f in fields])
        if delimiter != ",":
            return pair, 0, False
        return pair, len(fields), _may_be_decimal_commas(len(fields), _outside_quotes(line))
    if ";" in line or "\t" in line:
        return _first_two(re.split(r"[;\t]", line.replace(",", "."))), 0, False
    spaced_commas = re.split(r",\s+", line)
    if len(spaced_commas) >= 2 and any("," in f for f in spaced_commas[:2]):
        return _first_two([f.replace(",", ".") for f in spaced_commas]), 0, False
    if "," in line:
        fields = line.split(",")
        pair = _first_two(fields)
        spaced = line.split()
        if pair is None and len(spaced) >= 2 and all(f.count(",") <= 1 for f in spaced[:2]):
            return _first_two([f.replace(",", ".") for f in spaced]), 0, False
        return pair, len(fields), _may_be_decimal_commas(len(fields), line)
    return _first_two(line.split()), 0, False


def _first_two(fields: list[str]) -> tuple[float, float] | None:
    fields = [f.strip().strip('"') for f in fields]
    if len(fields) < 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


def interpolate_target(wl_nm: np.ndarray, absorbance: np.ndarray, grid_nm: np.ndarray) -> np.ndarray:
    """Linear ('slinear', as the paper's code) interpolation onto the grid; the grid must lie inside."""
    if grid_nm[0] < wl_nm[0] - 1e-9 or grid_nm[-1] > wl_nm[-1] + 1e-9:
        raise TargetFileError(
            f"the target covers {wl_nm[0]:g}-{wl_nm[-1]:g} nm but the protocol's grid is "
            f"{grid_nm[0]:g}-{grid_nm[-1]:g} nm: extend the target or narrow the grid"
        )
    return interp1d(wl_nm, absorbance, kind="slinear")(grid_nm)


def minmax(a: np.ndarray) -> np.ndarray:
    """Min-max normalise along the last axis; a flat spectrum maps to zeros."""
    a = np.asarray(a, dtype=float)
    lo = a.min(axis=-1, keepdims=True)
    span = a.max(axis=-1, keepdims=True) - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0)


@dataclass(frozen=True)
class SpectrumLoss:
    """The paper's loss against one target on one grid. Works on one spectrum or a stack (..., n_wl)."""

    target: np.ndarray
    a_low: float = 0.7
    a_high: float = 1.2

    def __post_init__(self) -> None:
        t = minmax(self.target)
        object.__setattr__(self, "_t_unit", t / np.linalg.norm(t))

    def delta(self, spectra: np.ndarray) -> np.ndarray:
        amax = np.max(spectra, axis=-1)
        return np.where(
            amax > self.a_high,
            0.0,
            np.where(amax >= self.a_low, 1.0, np.clip(amax, 0.0, None) / self.a_low),
        )

    def cosine(self, spectra: np.ndarray) -> np.ndarray:
        a = minmax(spectra)
        norm = np.linalg.norm(a, axis=-1)
        dot = a @ self._t_unit  # type: ignore[attr-defined]
        return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)

    def __call__(self, spectra: np.ndarray) -> np.ndarray | float:
        spectra = np.asarray(spectra, dtype=float)
        loss = 1.0 - self.delta(spectra) * self.cosine(spectra)
        return float(loss) if np.ndim(loss) == 0 else loss
