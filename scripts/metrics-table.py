#!/usr/bin/env python3
"""Prints the README's result tables (Markdown) from a run's metrics.json.

    python3 scripts/metrics-table.py runs/fashion/metrics.json
"""
import json
import sys


def row(m, name):
    acc = m.get("judged_accuracy")
    return (f"| {name} | {m['n']} | {m['fid']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | "
            + (f"{acc:.3f} | " if acc is not None else "")
            + f"{m['sampling_seconds']:.0f} s | {m['seconds']:.0f} s |")


def main():
    metrics = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion/metrics.json"))
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    print("| sampler | N | FID | precision | recall | sampling | total |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for steps in (10, 20, 50, 100):
        for pc in (False, True):
            key = f"ddim{steps}{'-pc' if pc else ''}-n{n}"
            if key in metrics:
                print(row(metrics[key], f"DDIM-{steps}, η = 0" + (" + 1 corrector step" if pc else "")))
    if f"ddpm1000-n{n}" in metrics:
        print(row(metrics[f"ddpm1000-n{n}"], "DDPM-1000 (Algorithm 2, σ² = β)"))
    print()
    print("| guidance scale s | N | FID | precision | recall | judged in requested class | sampling | total |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in (0, 1, 3, 10):
        key = f"guided-s{s}-n{n}"
        if key in metrics:
            print(row(metrics[key], f"{s}"))
    for key, m in metrics.items():
        if key.endswith("-n10000"):
            print()
            print(f"{key}: FID {m['fid']:.2f}, precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
                  f"{m['seconds']:.0f} s (sampling {m['sampling_seconds']:.0f} s, Inception {m['inception_seconds']:.0f} s)")
    if "nll" in metrics:
        print()
        print("nll:", json.dumps(metrics["nll"]))


if __name__ == "__main__":
    main()
