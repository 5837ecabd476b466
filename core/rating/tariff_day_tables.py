"""Day tables (`periods`: time-of-day periods covering 24 h exactly) and `seasons` of the
tariff file, read and checked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ..config.reader import TableReader
from ..errors import FieldError
from .tariff_values import read_hhmm, read_month_day
from .tariffs import MINUTES_PER_DAY, DayTable, Period, Season, hhmm

#: A period as written: start and end minute of the day and its rate.
_Given = tuple[int, int, str]
#: A piece of a period that does not cross midnight: start, end and the period's index.
_Piece = tuple[int, int, int]


def read_periods(r: TableReader, key: str, name: str) -> DayTable | None:
    """The day table `name` from the list of periods at `key`: each period well formed,
    none overlapping another, together covering 24 h; neighbours of one rate merged."""
    raw = r.raw(key, [])
    path = r.at(key)
    if not isinstance(raw, list) or not raw:
        r.error(
            'expected a list of { start = "HH:MM", end = "HH:MM", rate = "..." } covering 24 h',
            key,
        )
        return None
    given = _read_given_periods(r, raw, path)
    if given is None:
        return None
    pieces = _pieces_without_overlap(r, given, key, path)
    if pieces is None or not _covers_the_day(r, pieces, path):
        return None
    merged: list[Period] = []
    for a, b, i in pieces:
        rate = given[i][2]
        if merged and merged[-1].rate == rate and merged[-1].end == a:
            merged[-1] = Period(merged[-1].start, b, rate)
        else:
            merged.append(Period(a, b, rate))
    written = tuple(Period(g[0], g[1], g[2]) for g in given)
    return DayTable(name, tuple(merged), written)


def _read_given_periods(r: TableReader, raw: list, path: str) -> list[_Given] | None:
    """Each period's start, end and rate; None when any of them is bad (all are reported)."""
    given: list[_Given] = []
    ok = True
    for i, entry in enumerate(raw):
        er = TableReader(entry, f"{path}[{i}]", r.errors)
        start = read_hhmm(er, "start")
        end = read_hhmm(er, "end")
        rate = er.str("rate")
        er.finish()
        if start is None or end is None or rate is None:
            ok = False
            continue
        if start == end:
            er.error(f"empty period {hhmm(start)}–{hhmm(end)}; for the whole day use 00:00–24:00")
            ok = False
            continue
        if start == MINUTES_PER_DAY:
            er.error("a period cannot start at 24:00", "start")
            ok = False
            continue
        given.append((start, end, rate))
    return given if ok else None


def _pieces_without_overlap(
    r: TableReader, given: list[_Given], key: str, path: str
) -> list[_Piece] | None:
    """The periods cut at midnight, sorted; None (each overlap reported) when two overlap."""
    pieces: list[_Piece] = []
    ok = True
    for i, (start, end, _) in enumerate(given):
        mine = [(start, end)] if end > start else [(start, MINUTES_PER_DAY), (0, end)]
        mine = [(a, b) for a, b in mine if b > a]
        for a, b in mine:
            clash = next((j for pa, pb, j in pieces if a < pb and pa < b and j != i), None)
            if clash is not None:
                ja, jb, _ = given[clash]
                r.errors.append(
                    FieldError(
                        f"{path}[{i}]",
                        f"overlaps {key}[{clash}] ({hhmm(ja)}–{hhmm(jb)}); periods must not "
                        f"overlap — end one where the next starts",
                    )
                )
                ok = False
                break
        pieces.extend((a, b, i) for a, b in mine)
    if not ok:
        return None
    pieces.sort()
    return pieces


def _covers_the_day(r: TableReader, pieces: list[_Piece], path: str) -> bool:
    """Whether the sorted pieces cover 24 h; each gap is reported."""
    cursor = 0
    gaps = []
    for a, b, _ in pieces:
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < MINUTES_PER_DAY:
        gaps.append((cursor, MINUTES_PER_DAY))
    for a, b in gaps:
        r.errors.append(
            FieldError(
                path,
                f"{hhmm(a)}–{hhmm(b)} is not covered by any period; a day table must cover "
                f"24 h exactly — add a period for it or extend a neighbour",
            )
        )
    return not gaps


def read_seasons(r: TableReader) -> list[tuple[Season, str]] | None:
    raw = r.raw("seasons", [])
    path = r.at("seasons")
    if not isinstance(raw, list) or not raw:
        r.error('expected a list of { from = "MM-DD", to = "MM-DD", day_table = "..." }', "seasons")
        return None
    out: list[tuple[Season, str]] = []
    ok = True
    for i, entry in enumerate(raw):
        sr = TableReader(entry, f"{path}[{i}]", r.errors)
        start = read_month_day(sr, "from")
        end = read_month_day(sr, "to")
        table = sr.str("day_table")
        sr.finish()
        if start is None or end is None or table is None:
            ok = False
            continue
        season = Season(start, end, table)
        for j, (other, _) in enumerate(out):
            if _seasons_overlap(season, other):
                sr.error(
                    f"overlaps seasons[{j}] ({other}); seasons must not overlap — end one "
                    "the day before the next starts"
                )
                ok = False
                break
        out.append((season, sr.path))
    return out if ok else None


_LEAP_DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(366)]


def _seasons_overlap(a: Season, b: Season) -> bool:
    return any(a.contains(d) and b.contains(d) for d in _LEAP_DAYS)


def uncovered_days(seasons: Sequence[Season]) -> str:
    missing = [d for d in _LEAP_DAYS if not any(s.contains(d) for s in seasons)]
    if not missing:
        return ""
    spans: list[list[dt.date]] = []
    for d in missing:
        if spans and (d - spans[-1][1]).days == 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return ", ".join(f"{a:%m-%d}" if a == b else f"{a:%m-%d}–{b:%m-%d}" for a, b in spans)
