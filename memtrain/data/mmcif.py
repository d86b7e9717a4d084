"""A small mmCIF (CIF 1.1 / STAR) reader without third-party dependencies.

Only the first ``data_`` block of a file is read. Items are returned as a flat mapping from the
full item name (``_category.attribute``, spelled as in the file) to a list of string values: one
value for a plain item, one per row for an item in a ``loop_``. The CIF placeholders ``.``
(inapplicable) and ``?`` (unknown) are kept as the strings ``"."`` and ``"?"``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from pathlib import Path

from memtrain.data.errors import DataFormatError

# One token of a line that holds quotes or '#' (other lines are split on whitespace), with the
# whitespace before it. Alternatives are tried in order:
#   comment    '#' at the start of a token, to the end of the line
#   quoted     a quote closes the string only when followed by whitespace or the end of the line,
#              so 'a'b' is the value a'b
#   badquote   an opening quote that is never closed
#   bare       any other run of non-whitespace characters (which may contain quotes or '#')
_LINE_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#.*)
      | '(?P<squote>(?:[^']|'(?=\S))*)'(?=\s|$)
      | "(?P<dquote>(?:[^"]|"(?=\S))*)"(?=\s|$)
      | (?P<badquote>['"])
      | (?P<bare>\S+)
    )""",
    re.VERBOSE,
)

_TAG, _LOOP, _DATA, _END = "tag", "loop", "data", "end"
_RESERVED_PREFIXES = ("data_", "loop_", "save_", "global_", "stop_")

PROTEIN_POLYMER_TYPE = "polypeptide(L)"


def _error(source: str, line: int, message: str) -> DataFormatError:
    return DataFormatError(f"{source}, line {line}: {message}")


class _Tokens:
    """The tokens of a CIF text, with the positions of its item names and keywords.

    ``values`` holds every token in order (comments dropped; quotes and text-field semicolons
    removed). ``markers`` lists ``(token index, kind, line)`` for each unquoted item name
    (``_TAG``), ``loop_`` and ``data_`` header; every other token is a value.
    ``line_starts[k]`` is the index of the first token on or after line ``k + 1``.
    """

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.values: list[str] = []
        self.markers: list[tuple[int, str, int]] = []
        self.line_starts: list[int] = []
        lines = text.split("\n")
        number = 0  # lines read so far, so the 1-based number of the current line once read
        while number < len(lines):
            line = lines[number]
            number += 1
            self.line_starts.append(len(self.values))
            if line.startswith(";"):
                number, line = self._text_field(lines, number, line)
            if "'" in line or '"' in line or "#" in line:
                self._add_quoted_line(line, number)
            else:
                words = line.split()
                if "_" in line:  # every item name and reserved word holds '_'
                    for word in words:
                        self._add_bare(word, number)
                else:
                    self.values.extend(words)

    def _text_field(self, lines: list[str], number: int, first: str) -> tuple[int, str]:
        """Add the text field opened on line ``number``; return the closing line's number and
        the rest of that line."""
        opening = number
        field = [first[1:]]
        while number < len(lines) and not lines[number].startswith(";"):
            field.append(lines[number])
            number += 1
            self.line_starts.append(len(self.values) + 1)
        if number == len(lines):
            raise _error(self.source, opening, "unterminated text field (no closing ';' line)")
        self.values.append("\n".join(field))
        self.line_starts.append(len(self.values))
        return number + 1, lines[number][1:]

    def _add_quoted_line(self, line: str, number: int) -> None:
        for match in _LINE_TOKEN.finditer(line):
            group = match.lastgroup
            if group == "bare":
                self._add_bare(match.group(group), number)
            elif group in ("squote", "dquote"):
                self.values.append(match.group(group))
            elif group == "badquote":
                raise _error(self.source, number, "unterminated quoted string")

    def _add_bare(self, word: str, number: int) -> None:
        if word[0] == "_":
            self.markers.append((len(self.values), _TAG, number))
        elif word[:7].lower().startswith(_RESERVED_PREFIXES):
            lowered = word.lower()
            if lowered == "loop_":
                self.markers.append((len(self.values), _LOOP, number))
            elif lowered.startswith("data_") and len(word) > 5:
                self.markers.append((len(self.values), _DATA, number))
            else:
                raise _error(self.source, number, f"unsupported CIF reserved word {word!r}")
        self.values.append(word)

    def line_of(self, index: int) -> int:
        """The line number of the token at ``index``."""
        return bisect_right(self.line_starts, index)


def parse_cif(text: str, source: str = "<string>") -> dict[str, list[str]]:
    """Parse the first data block of a CIF text into ``{item name: [values]}``.

    ``source`` names the text (usually its file path) in error messages. Raises
    :class:`DataFormatError` with the source and line number on malformed input.
    """
    tokens = _Tokens(text.replace("\r\n", "\n"), source)
    values, markers = tokens.values, tokens.markers
    if not markers or markers[0][1] != _DATA or markers[0][0] != 0:
        if not values:
            raise DataFormatError(f"{source}: no data_ block found")
        raise _error(
            source, tokens.line_of(0), f"expected a data_ block header, found {values[0]!r}"
        )
    markers.append((len(values), _END, tokens.line_of(len(values))))

    cif: dict[str, list[str]] = {}
    expected = 1  # index of the token that must start the next item or loop
    m = 1
    while True:
        index, kind, line = markers[m]
        if index != expected:
            raise _error(
                source, tokens.line_of(expected), f"value {values[expected]!r} without an item name"
            )
        if kind in (_END, _DATA):  # only the first data block is read
            return cif
        if kind == _TAG:
            if markers[m + 1][0] == index + 1:
                raise _error(source, line, f"item {values[index]} has no value")
            names = [(index, line)]
            start, stop, m = index + 1, index + 2, m + 1
        else:  # _LOOP
            names = []
            m += 1
            while markers[m][1] == _TAG and markers[m][0] == index + 1 + len(names):
                names.append((markers[m][0], markers[m][2]))
                m += 1
            start, stop = index + 1 + len(names), markers[m][0]
            if not names:
                raise _error(source, line, "loop_ without item names")
            if stop == start or (stop - start) % len(names):
                raise _error(
                    source,
                    line,
                    f"loop_ of {len(names)} items ({values[names[0][0]]}, ...) has "
                    f"{stop - start} values, not a positive multiple of {len(names)}",
                )
        for column, (name_index, name_line) in enumerate(names):
            name = values[name_index]
            if name in cif:
                raise _error(source, name_line, f"duplicate item {name}")
            cif[name] = values[start + column : stop : len(names)]
        expected = stop


def polymer_sequences(cif: dict[str, list[str]], source: str = "<cif>") -> dict[str, str]:
    """Map entity id to canonical one-letter sequence for the ``polypeptide(L)`` entities.

    Entities whose canonical sequence is unknown (``?`` or ``.``) are left out. A structure
    without ``_entity_poly`` has no polymers and gives an empty mapping.
    """
    entity_ids = cif.get("_entity_poly.entity_id")
    if entity_ids is None:
        return {}
    types = cif.get("_entity_poly.type")
    codes = cif.get("_entity_poly.pdbx_seq_one_letter_code_can")
    if types is None or codes is None:
        raise DataFormatError(f"{source}: _entity_poly lacks type or pdbx_seq_one_letter_code_can")
    if not len(entity_ids) == len(types) == len(codes):
        raise DataFormatError(f"{source}: _entity_poly items have different numbers of values")
    sequences: dict[str, str] = {}
    for entity_id, polymer_type, code in zip(entity_ids, types, codes):
        if polymer_type == PROTEIN_POLYMER_TYPE and code not in ("?", "."):
            sequences[entity_id] = "".join(code.split())
    return sequences


def read_mmcif_sequences(path: str | Path) -> list[tuple[str, str]]:
    """Read the protein entity sequences of an mmCIF file as ``(f"{stem}_{entity_id}", seq)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    sequences = polymer_sequences(parse_cif(text, source=str(path)), source=str(path))
    return [(f"{path.stem}_{entity_id}", seq) for entity_id, seq in sequences.items()]
