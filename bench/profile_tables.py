"""The tables of bench/encoder.py's results files: one line per profile, mean ± std over seeds, and the
paired differences a choice reads (validation against full fine-tuning; held-out against the profile on
the same held-out rows, with the Nadeau-Bengio corrected SE; test against the default, plain SE)."""

from __future__ import annotations

import statistics

from bench.stats import paired, split_sizes


def mean_std(values: list[float | None]) -> str:
    """mean ± std of the values given ("—" when a metric does not apply, e.g. neutral F1 on other data)."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(rows: list[dict], crossfit: bool | None = None, baseline: str = "default") -> str:
    """One line per profile: mean ± std over its distinct seeds (a repeated seed counts once: the last run).
    The cross-fit table (held-out scores, every fit's epochs, test paired with `baseline`) when `crossfit`;
    None: when every row has them."""
    by_profile: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_profile.setdefault(row["profile"], {})[row["seed"]] = row
    if baseline in by_profile:  # the baseline first: every other line is read against it
        by_profile = {baseline: by_profile.pop(baseline), **by_profile}
    if crossfit or (crossfit is None and all("heldout" in r for r in rows)):
        return crossfit_table(by_profile, baseline)
    lines = ["| profile | seeds | val macro-F1 | Δ val macro-F1 vs full fine-tuning (paired, corrected SE) "
             "| test macro-F1 | neutral F1 | ECE | `dvc repro` min, fastest / mean | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for profile, seeds in by_profile.items():
        r = list(seeds.values())
        walls = [x["wall_s"] / 60 for x in r]  # the runs the scores come from (a re-run replaces its seed's)
        col = lambda key: mean_std([x[key] for x in r])  # noqa: E731
        baseline = FULL_FINE_TUNING.get(profile.split("-")[0], profile)  # a lever's: its encoder fully fine-tuned
        full = by_profile.get(baseline, {}) if baseline != profile else {}
        lines.append(f"| {profile} | {','.join(map(str, sorted(seeds)))} | {col('val_macro_f1')} | "
                     f"{vs_full_fine_tuning(seeds, full)} | "
                     f"{col('test_macro_f1')} | {col('test_neutral_f1')} | {col('test_ece')} | "
                     f"{min(walls):.1f} / {statistics.mean(walls):.1f} | {max(x['peak_mib'] for x in r) / 1024:.1f} |")
    return "\n".join(lines)


# The full fine-tuning each lever profile ("<encoder>-<lever>": freezing, grouping) is compared with.
# mpnet-first-epoch: the freeze rows predate train.patience_from, so they ran under that rule too.
FULL_FINE_TUNING = {"mpnet": "mpnet-first-epoch", "minilm": "minilm"}


def vs_full_fine_tuning(seeds: dict[int, dict], full: dict[int, dict]) -> str:
    """Paired validation macro-F1 difference against full fine-tuning of the same encoder on the seeds
    both ran: mean ± the Nadeau-Bengio corrected SE (each seed validates on its own, overlapping
    split; the sizes of one split, from the first row that records them), and on how many seeds it was
    higher. Without recorded sizes there is nothing to correct with: no cell."""
    shared = sorted(set(seeds) & set(full))
    sizes = next((r for r in [*full.values(), *seeds.values()] if "n_train" in r), None)
    if len(shared) < 2 or sizes is None:
        return ""
    p = paired([seeds[s]["val_macro_f1"] - full[s]["val_macro_f1"] for s in shared], sizes["n_train"], sizes["n_val"])
    return f"{p['mean']:+.3f} ± {p['se_corrected']:.3f} ({p['better']}/{p['n']})"


def vs_default(seeds: dict[int, dict], default: dict[int, dict]) -> str:
    """Paired test macro-F1 difference against the `default` profile on the seeds both ran: mean ± SE
    (plain: the test split is the same for every seed), and on how many seeds it was higher."""
    shared = sorted(set(seeds) & set(default))
    if len(shared) < 2:
        return ""
    p = paired([seeds[s]["test_macro_f1"] - default[s]["test_macro_f1"] for s in shared])
    return f"{p['mean']:+.3f} ± {p['se']:.3f} ({p['better']}/{p['n']})"


# A profile whose held-out rows are another profile's (the same folds or validation split for every seed), so
# the two compare on them paired: this is the selection signal (the test split is read only for the report).
HELDOUT_PAIR = {"folds3-noswa": "folds3", "folds3-nobacktrans": "folds3", "folds5": "folds3",
                "patience-swa-start": "head", "ordinal": "head", "minilm-ordinal": "minilm",
                "backtrans": "head", "padded": "head",
                "head": "default", "folds3-head-tail": "folds3-nobacktrans",
                "folds3-no-tokenizer": "folds3-head-tail", "folds3-no-smoothing": "folds3-head-tail"}


def vs_heldout_pair(seeds: dict[int, dict], pair: dict[int, dict]) -> str:
    """Paired held-out macro-F1 difference against `pair` on the seeds both ran: mean ± the Nadeau-Bengio
    corrected SE (n_test / n_train of one fit: 1 / (K - 1) for K folds, else val / train; each seed's
    split overlaps the others'), on how many seeds it was higher, and the mean held-out CE difference."""
    shared = sorted(set(seeds) & set(pair))
    if len(shared) < 2:
        return ""
    first = seeds[shared[0]]
    k = len(first["kept"]) if first["heldout"] == "out-of-fold" else 1
    n_train, n_test = split_sizes(k, first.get("n_train"), first.get("n_val"))
    p = paired([seeds[s]["val_macro_f1"] - pair[s]["val_macro_f1"] for s in shared], n_train, n_test)
    ce = statistics.mean(seeds[s]["val_ce_loss"] - pair[s]["val_ce_loss"] for s in shared)
    return f"{p['mean']:+.3f} ± {p['se_corrected']:.3f} ({p['better']}/{p['n']}); {ce:+.3f}"


# Between the two tables of `crossfit_table`: what may choose, then what only reports.
TEST_CAPTION = "On the test split (read for the report only; no choice above looked at it):"


def crossfit_table(by_profile: dict[str, dict[int, dict]], baseline: str = "default") -> str:
    """The tables of runs that record their held-out scores (validation or out-of-fold) and every fit's
    epochs: first what a choice reads (held-out scores, paired with the profile on the same held-out
    rows; epochs; time), then the test scores (paired with `baseline`), one line per profile in each."""
    select = ["| profile | seeds | held out (rows) | held-out macro-F1 | Δ held-out vs the same held-out rows' "
              "profile: macro-F1 (paired, corrected SE, higher on); CE | epochs run / SWA snapshots (per fit) "
              "| `dvc repro` min, mean |", "|---|---|---|---|---|---|---|"]
    test = ["| profile | seeds | test macro-F1 | Δ test macro-F1 vs default (paired, higher on) | test, bias tuned "
            "| test accuracy | neutral F1 | ECE |", "|---|---|---|---|---|---|---|---|"]
    for profile, seeds in by_profile.items():
        r = [seeds[s] for s in sorted(seeds)]
        col = lambda key: mean_std([x[key] for x in r])  # noqa: E731
        fits = "; ".join(f"{'/'.join(map(str, x['epochs_run']))} : {'/'.join(map(str, x['snapshots']))}" for x in r)
        pair = by_profile.get(HELDOUT_PAIR.get(profile, ""), {})
        head = f"| {profile} | {','.join(map(str, sorted(seeds)))} |"
        select.append(f"{head} {r[0]['heldout']} ({r[0]['heldout_rows']}) | {col('val_macro_f1')} | "
                      f"{vs_heldout_pair(seeds, pair)} | {fits} | {statistics.mean(x['wall_s'] for x in r) / 60:.1f} |")
        vs = vs_default(seeds, by_profile[baseline]) if profile != baseline and baseline in by_profile else ""
        test.append(f"{head} {col('test_macro_f1')} | {vs} | {col('test_bias_tuned_macro_f1')} | "
                    f"{col('test_accuracy')} | {col('test_neutral_f1')} | {col('test_ece')} |")
    return "\n".join([*select, "", TEST_CAPTION, "", *test, *temperature_table(by_profile)])


def temperature_table(by_profile: dict[str, dict[int, dict]]) -> list[str]:
    """train.temperature_scaling, for the profiles whose runs record it (bench/encoder.calibration_fields):
    the held-out rows' cross-entropy and ECE unscaled vs scaled by a temperature fitted on the other 4 of 5
    parts (what choosing it may read; per seed, scaled - unscaled, with the corrected SE, and on how many seeds
    lower), then the same test scores without and with the temperature fitted on all held-out rows."""
    lines = []
    for profile, seeds in by_profile.items():
        r = [seeds[s] for s in sorted(seeds) if seeds[s].get("heldout_calibration")]
        if len(r) < 2:
            continue
        h = [x["heldout_calibration"] for x in r]
        sizes = split_sizes(len(r[0]["kept"]) if r[0]["heldout"] == "out-of-fold" else 1, r[0].get("n_train"),
                            r[0].get("n_val"))
        delta = lambda key: paired([c[f"{key}_scaled"] - c[key] for c in h], *sizes)  # noqa: E731
        lower = lambda key: sum(c[f"{key}_scaled"] < c[key] for c in h)  # noqa: E731
        ce, ece = delta("ce_loss"), delta("ece")
        both = lambda a, b: f"{mean_std(a)} → {mean_std(b)}"  # noqa: E731
        lines.append(f"| {profile} | {','.join(str(x['seed']) for x in r)} | {r[0]['heldout']} "
                     f"({r[0]['heldout_rows']}) | {mean_std([x['temperature'] for x in r])} "
                     f"| {both([c['ce_loss'] for c in h], [c['ce_loss_scaled'] for c in h])} "
                     f"| {ce['mean']:+.3f} ± {ce['se_corrected']:.3f} ({lower('ce_loss')}/{ce['n']}) "
                     f"| {both([c['ece'] for c in h], [c['ece_scaled'] for c in h])} "
                     f"| {ece['mean']:+.3f} ± {ece['se_corrected']:.3f} ({lower('ece')}/{ece['n']}) "
                     f"| {both([x['test_ece_unscaled'] for x in r], [x['test_ece'] for x in r])} "
                     f"| {both([x['test_ce_loss_unscaled'] for x in r], [x['test_ce_loss'] for x in r])} |")
    if not lines:
        return []
    return ["", TEMPERATURE_CAPTION, "",
            "| profile | seeds | held out (rows) | temperature | held-out CE, unscaled → scaled (T from the other "
            "parts) | Δ held-out CE (paired, corrected SE, lower on) | held-out ECE, unscaled → scaled "
            "| Δ held-out ECE (paired, corrected SE, lower on) | test ECE, unscaled → scaled "
            "| test CE, unscaled → scaled |",
            "|---|---|---|---|---|---|---|---|---|---|", *lines]


TEMPERATURE_CAPTION = ("Temperature scaling (`train.temperature_scaling`): on the held-out rows, each of 5 stratified "
                       "parts scaled by the temperature fitted on the other 4 (what the choice reads), then test:")
