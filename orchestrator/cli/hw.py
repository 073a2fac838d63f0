"""``sdl hw``: manual control of one rig device, with the same drivers a campaign uses.

    sdl hw --rig RIG.yaml pump NAME [--diameter MM] [--rate UL_MIN] [--run | --stop | --status]
    sdl hw --rig RIG.yaml spectrum --out FILE.csv [--integration-time-us US]

Every value is checked against the rig file and the pump's limits before anything is sent. A pump
started with ``--run`` keeps running after the command returns (stop it with ``--stop``). On a
simulated rig each command starts a fresh simulated world, so state does not carry over between
commands; point the rig file at a pty served by ``sdl sim pump`` for a pump that lives on.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import structlog
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from drivers.base import PumpStatus
from drivers.errors import DeviceError
from orchestrator.cli import fail
from orchestrator.config_errors import ConfigError
from orchestrator.rig import Rig, RigConfig, build_rig, driver_ranges, load_rig, pump_rate_limits_ul_min
from orchestrator.spectra import TargetFileError
from orchestrator.store import RigBusy, default_db_url, normalise_url, open_store, sqlite_file

EXIT_DEVICE = 1
EXIT_CONFIG = 2


class UsageError(ValueError):
    """A command-line value refused before anything reaches a device."""


def register(subparsers: argparse._SubParsersAction) -> None:
    hw = subparsers.add_parser(
        "hw",
        help="manual control of one pump or the spectrometer of a rig",
        description="Talk to one device of a rig with the campaign's own drivers (checks before a run).",
    )
    hw.add_argument(
        "--rig", required=True, type=Path, metavar="RIG.yaml", help="rig file (deploy/rigs/*.yaml)"
    )
    hw.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr: -v device events, -vv every byte"
    )
    hw.add_argument(
        "--db",
        help="store URL or SQLite file, asked whether a campaign drives the rig (default: $SDL_DB_URL, "
        "else $SDL_DB, else sqlite:///runs/sdl.db)",
    )
    hw.add_argument(
        "--force",
        action="store_true",
        help="talk to the device even while a live process drives a campaign on the rig (it re-sends "
        "set-up commands and turns New Era Safe mode off, under the campaign's feet)",
    )
    sub = hw.add_subparsers(dest="device", metavar="DEVICE")
    sub.required = True

    pump = sub.add_parser("pump", help="set, run, stop or query one syringe pump")
    pump.add_argument("name", help="the pump's name in the rig file")
    pump.add_argument(
        "--diameter", type=float, metavar="MM", help="syringe inside diameter (default: rig file's)"
    )
    pump.add_argument("--rate", type=float, metavar="UL_MIN", help="infusion rate in uL/min")
    action = pump.add_mutually_exclusive_group()
    action.add_argument("--run", action="store_true", help="start infusing (keeps running after exit)")
    action.add_argument("--stop", action="store_true", help="stop the pump")
    action.add_argument("--status", action="store_true", help="only report the pump's state (default)")
    pump.set_defaults(func=run_pump)

    spectrum = sub.add_parser("spectrum", help="acquire one spectrum of raw counts")
    spectrum.add_argument(
        "--out", required=True, type=Path, metavar="FILE.csv", help="writes wavelength_nm,counts"
    )
    spectrum.add_argument("--integration-time-us", type=int, metavar="US", help="override the rig file's")
    spectrum.set_defaults(func=run_spectrum)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _cli_logging(verbose: int) -> Iterator[None]:
    """Keep the drivers' logs off stdout (the command's answer goes there) for this command only;
    the previous structlog configuration comes back afterwards (the command may run in-process)."""
    previous = structlog.get_config()
    level = (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


def _guarded(body):  # noqa: ANN001, ANN202 - small decorator, the wrapped handlers are typed
    """Turn the operator's errors into a message and an exit code, never a traceback."""

    def handler(args: argparse.Namespace) -> int:
        try:
            with _cli_logging(getattr(args, "verbose", 0)):
                return body(args)
        except (ConfigError, UsageError, TargetFileError) as exc:
            return fail(str(exc), EXIT_CONFIG)
        except DeviceError as exc:
            return fail(str(exc), EXIT_DEVICE)

    handler.__doc__ = body.__doc__
    return handler


# -- pump -------------------------------------------------------------------------------------------


def check_pump_request(
    cfg: RigConfig, name: str, diameter_mm: float | None, rate_ul_min: float | None
) -> float:
    """The syringe diameter to use, after refusing a bad name, diameter or rate. Raises UsageError."""
    try:
        pump = cfg.pump(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from exc
    diameter = pump.syringe_diameter_mm if diameter_mm is None else diameter_mm
    (dia_low, dia_high), _ = driver_ranges(pump.driver)
    if not (math.isfinite(diameter) and dia_low <= diameter <= dia_high):
        raise UsageError(
            f"--diameter {diameter:g} mm: a {pump.driver} pump accepts {dia_low:g}-{dia_high:g} mm"
        )
    if rate_ul_min is not None:
        low, high = pump_rate_limits_ul_min(pump.driver, diameter)
        if not (math.isfinite(rate_ul_min) and low <= rate_ul_min <= high):
            raise UsageError(
                f"--rate {rate_ul_min:g} uL/min: pump {name} ({pump.driver}) with a {diameter:g} mm syringe "
                f"delivers {low:.3g}-{high:.4g} uL/min"
            )
    return diameter


def _check_rig_free(args: argparse.Namespace, cfg: RigConfig) -> None:
    """Refuse (UsageError) while a live process drives a campaign on the rig, unless ``--force``:
    connecting re-sends set-up commands, and a New Era pump's Safe mode is switched off, which the
    campaign's driver cannot notice (the pump takes Safe-framed packets in Basic mode as well), so a
    crash of that process would no longer stop the pump. A store that does not exist holds no campaign."""
    if args.force:
        return
    url = normalise_url(args.db or default_db_url())
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return
    try:
        store = open_store(url)
    except SQLAlchemyError as exc:
        raise UsageError(
            f"cannot open the store to check that no campaign drives rig {cfg.name!r} ({exc.__class__.__name__}: "
            f"{exc}); point --db at it, or --force to talk to the device without the check"
        ) from exc
    try:
        store.check_rig_free(cfg.name, then=(
            "sdl hw would re-send set-up commands to its devices and turn New Era Safe mode off under it. "
            "Pause the campaign and stop its process (Ctrl-C in its terminal, or stop its agent; "
            "`sdl resume ID` continues it), or abort it; --force talks to the device anyway"
        ))
    except RigBusy as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.close()


def _one_device_rig(cfg: RigConfig, *, pump: str | None = None, spectrometer: bool = False) -> Rig:
    """A rig of only the device asked for, so that an absent spectrometer does not block a pump check."""
    subset = cfg.model_copy(
        update={
            "pumps": [p for p in cfg.pumps if p.name == pump],
            "spectrometer": cfg.spectrometer if spectrometer else None,
        }
    )
    return build_rig(subset)


def _status_line(name: str, status: PumpStatus, diameter_mm: float) -> str:
    alarm = f", alarm: {status.alarm}" if status.alarm else ""
    return (
        f"{name}: {status.state.name.lower()}, rate {status.rate_ul_min:g} uL/min, "
        f"syringe {diameter_mm:g} mm, dispensed {status.dispensed_ul:g} uL{alarm}"
    )


@_guarded
def run_pump(args: argparse.Namespace) -> int:
    """Set the diameter and rate, then run, stop or only report one pump."""
    cfg = load_rig(args.rig)
    diameter = check_pump_request(cfg, args.name, args.diameter, args.rate)
    _check_rig_free(args, cfg)
    # manual control: a pump started here keeps running after exit, as documented, and a later
    # --status must not arm a watchdog that stops it once this command is gone (New Era Safe mode)
    cfg = cfg.model_copy(
        update={
            "pumps": [
                p.model_copy(update={"safe_mode_timeout_s": 0}) if p.name == args.name else p
                for p in cfg.pumps
            ]
        }
    )
    rig = _one_device_rig(cfg, pump=args.name)
    pump = rig.pumps[args.name]
    console = _console()
    try:
        rig.connect()
    except DeviceError:
        if args.stop:  # the one command that must not fail quietly: the pump may be running on
            print(f"NOT STOPPED: connecting to pump {args.name} failed (the error below says why), so it may still "
                  "be pumping (a pump started with --run has no watchdog): stop it at its keypad or switch it off",
                  file=sys.stderr)
        raise
    try:
        if args.diameter is not None:
            pump.set_syringe_diameter_mm(diameter)
        if args.rate is not None:
            pump.set_rate_ul_min(args.rate)
        if args.run:
            pump.run()
        elif args.stop:
            pump.stop()
        console.print(_status_line(args.name, pump.status(), pump.syringe_diameter_mm))
    except DeviceError:
        # a half-done command must not leave the pump moving
        rig.safe_state()
        raise
    finally:
        rig.close()
    return 0


# -- spectrum ---------------------------------------------------------------------------------------


@_guarded
def run_spectrum(args: argparse.Namespace) -> int:
    """Acquire one spectrum of raw counts and write it as wavelength_nm,counts."""
    cfg = load_rig(args.rig)
    if cfg.spectrometer is None:
        raise UsageError(f"{args.rig}: the rig has no spectrometer section")
    if args.integration_time_us is not None and not 1 <= args.integration_time_us <= 60_000_000:
        raise UsageError(f"--integration-time-us {args.integration_time_us}: allowed 1 to 60000000 us")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    _check_rig_free(args, cfg)
    rig = _one_device_rig(cfg, spectrometer=True)
    spectrometer = rig.spectrometer
    assert spectrometer is not None
    rig.connect()
    try:
        if args.integration_time_us is not None:
            spectrometer.set_integration_time_us(args.integration_time_us)
        wavelengths = spectrometer.wavelengths_nm()
        counts = spectrometer.acquire_counts()
        saturation = spectrometer.saturation_counts
        integration = spectrometer.integration_time_us
    finally:
        rig.close()
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["wavelength_nm", "counts"])
        writer.writerows((f"{w:.4f}", f"{c:.6g}") for w, c in zip(wavelengths, counts, strict=True))
    peak = float(max(counts)) if len(counts) else 0.0
    _console().print(
        f"wrote {len(counts)} points ({wavelengths[0]:.1f}-{wavelengths[-1]:.1f} nm) to {args.out}; "
        f"integration {integration} us, peak {peak:.0f} counts = {100 * peak / saturation:.0f} % of saturation"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover - `sdl hw` is the entry point
    from orchestrator.cli.main import main

    sys.exit(main(["hw", *sys.argv[1:]]))
