"""Target spectra for the extra chemistry models: each model's own noise-free spectrum at its optimum.

    python -m benchmarks.targets            # rewrite protocols/targets/{au_nanorod,two_band}.csv
    python -m benchmarks.targets --check    # exit 1 if a file differs from what the model gives

With such a target the loss is 0 exactly at the model's optimum (and wherever the model gives the
same shape at an amplitude within the protocol's window), so an optimiser's result can be scored by
its distance to that point. The grid is the protocol's, 380-800 nm at 1 nm.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.spectra import wavelength_grid
from simulators.chemistry import AuNanorod, TwoBand

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "au_nanorod.csv": ("simulators.chemistry:AuNanorod", AuNanorod),
    "two_band.csv": ("simulators.chemistry:TwoBand", TwoBand),
}


def target_csv(spec: str, model: AuNanorod | TwoBand) -> str:
    grid = wavelength_grid()
    optimum = ", ".join(f"{k} {v:g}" for k, v in model.optimum().items())
    out = io.StringIO()
    out.write(
        f"# Target for {spec} with its default params: its noise-free spectrum at its optimum\n"
        f"# ({optimum}), so the loss is 0 there. Written by `python -m benchmarks.targets`.\n"
        "wavelength_nm,absorbance\n"
    )
    for wl, a in zip(grid, model.target(grid), strict=True):
        out.write(f"{wl:g},{a:.6f}\n")
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.targets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=REPO / "protocols" / "targets", help="target folder")
    args = parser.parse_args(argv)
    stale = []
    for name, (spec, cls) in TARGETS.items():
        text = target_csv(spec, cls())
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            sys.stdout.write(f"wrote {path}\n")
    if stale:
        sys.stdout.write(f"out of date (run python -m benchmarks.targets): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
