"""The D-VAE paper's Theorem 2, checked numerically (Yu et al., ICML 2024, "Purify Unlearnable Examples via
Rate-Constrained Variational Autoencoders", Sec. 3).

Two classes in one dimension, x ~ N(-delta, sigma^2) or N(+delta, sigma^2) with equal weight: a class-wise
perturbation of size delta on data of intra-class spread sigma. After normalising x to unit variance (as a VAE's
encoder effectively sees it), the KL divergence of its distribution from N(0, 1) - the rate a VAE must spend to
keep the classes (and so the perturbation) - satisfies, with r = delta / sigma,

    ln(1 + r^2) / 2 - ln 2  <=  KL  <=  ln(1 + r^2) / 2,

and grows with r. So a rate limit (the ``kld_limit`` of the rate-constrained VAE) removes perturbations with large
inter-class distance and small intra-class variance first - the strong unlearnable examples.

    python benchmarks/theory_kl.py [--r 0,0.25,0.5,1,2,4,8,16] [--plot kl.png]

The KL is computed by quadrature of the exact mixture density (scipy), not from the bound's formula; ``--plot``
draws it with both bounds over a logarithmic r axis.
"""
from __future__ import annotations

import argparse
import math

from scipy import integrate, stats


def kl_to_standard_normal(r: float) -> float:
    """KL( normalised 0.5 N(-r, 1) + 0.5 N(r, 1)  ||  N(0, 1) ) by adaptive quadrature (sigma = 1 w.l.o.g.)."""
    scale = math.sqrt(1 + r * r)  # the mixture's standard deviation
    mu, sd = r / scale, 1 / scale  # components after normalisation

    def p(x: float) -> float:
        return 0.5 * stats.norm.pdf(x, -mu, sd) + 0.5 * stats.norm.pdf(x, mu, sd)

    def integrand(x: float) -> float:
        px = p(x)
        return px * (math.log(px) - stats.norm.logpdf(x)) if px > 0 else 0.0

    # both densities are symmetric: twice the positive half, split where the component's mass is (at large r the
    # components are so narrow that one adaptive pass over the whole line missed one of them: half the KL)
    lo, hi = max(mu - 12 * sd, 0.0), mu + 12 * sd
    half = sum(integrate.quad(integrand, a, b, points=[mu] if a < mu < b else None, limit=400, epsabs=1e-12)[0]
               for a, b in ((0.0, lo), (lo, hi)) if b > a)
    return 2 * half


def plot(rs: list[float], path: str):
    """KL(r) by quadrature on a log-spaced grid of r > 0 (with the table's r), and both bounds: the PNG's path."""
    import numpy as np

    from unlearnable.report import curve_plot

    grid = sorted(set(np.round(np.geomspace(0.05, max(max(rs), 1.0), 60), 4)) | {r for r in rs if r > 0})
    lower = [math.log(1 + r * r) / 2 - math.log(2) for r in grid]
    upper = [math.log(1 + r * r) / 2 for r in grid]
    return curve_plot({"upper ln(1+r^2)/2": (grid, upper), "KL (quadrature)": (grid, [kl_to_standard_normal(r)
                      for r in grid]), "lower ln(1+r^2)/2 - ln 2": (grid, lower)}, path,
                     "r = delta / sigma (inter-class distance over intra-class spread)",
                     "KL to N(0, 1), nats", "D-VAE Theorem 2: two classes in 1-D after normalisation",
                     percent=False, markers=False, xscale="log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r", default="0,0.25,0.5,1,2,4,8,16", help="comma-separated delta / sigma ratios")
    ap.add_argument("--plot", help="also draw KL(r) and the bounds as a PNG")
    args = ap.parse_args()
    try:
        rs = sorted({float(v) for v in args.r.split(",")})  # in increasing order, so monotonicity is always checked
    except ValueError:
        ap.error(f"--r takes comma-separated numbers, got {args.r!r}")  # exit 2: 1 says the theorem failed
    if any(not (r >= 0 and math.isfinite(r)) for r in rs):
        ap.error(f"--r takes finite ratios >= 0, got {args.r!r}")
    if args.plot:  # an unwritable place fails now, not after the table
        from unlearnable.data.store import check_out_file

        try:
            check_out_file(args.plot, overwrite=True, suffix=".png")
        except Exception as e:  # noqa: BLE001 - UnlearnableError: one line, exit 2
            ap.error(str(e))
    print("| r = delta/sigma | lower ln(1+r^2)/2 - ln 2 | KL (quadrature) | upper ln(1+r^2)/2 | within |")
    print("|---|---|---|---|---|")
    kls, ok = [], True
    for r in rs:
        kl = kl_to_standard_normal(r)
        lo, hi = math.log(1 + r * r) / 2 - math.log(2), math.log(1 + r * r) / 2
        inside = lo - 1e-9 <= kl <= hi + 1e-9
        ok &= inside
        kls.append(kl)
        print(f"| {r:g} | {lo:.4f} | {kl:.4f} | {hi:.4f} | {'yes' if inside else 'NO'} |")
    increasing = all(b >= a - 1e-12 for a, b in zip(kls, kls[1:]))
    print(f"\nall within the bounds: {ok}; KL increasing in r: {increasing}")
    if args.plot:
        try:
            print(f"plot: {plot(rs, args.plot)}")
        except OSError as e:
            ap.error(f"cannot write {args.plot}: {e.strerror or e}")
    raise SystemExit(0 if ok and increasing else 1)


if __name__ == "__main__":
    main()
