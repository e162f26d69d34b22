"""The method's claims, judged on the demo's figures with their 95 % intervals.

A claim compares a figure with another condition's or with a bar. With 16 images per prompt, the
intervals of rates are about +-0.2 wide, so a claim is one of three things: it **holds** (the whole
interval is on the claimed side), it **fails** (the whole interval is on the other side), or it is
**not separable at this sample size** (the interval straddles the line: more seeds would tell).
"""

from __future__ import annotations

HOLDS, FAILS, OPEN = "holds", "fails", "not separable at this sample size"


def _figure(condition: dict, key: str) -> tuple[float, float, float]:
    value = condition[key]
    low, high = condition.get("intervals", {}).get(key, (value, value))
    return value, low, high


def below(a: tuple, b: tuple) -> str:
    """a's figure is below b's: holds when the intervals do not overlap with a under b."""
    if a[2] < b[1]:
        return HOLDS
    if a[1] > b[2]:
        return FAILS
    return OPEN


def at_least(a: tuple, bar: float) -> str:
    if a[1] >= bar:
        return HOLDS
    if a[2] < bar:
        return FAILS
    return OPEN


def at_most(a: tuple, bar: float) -> str:
    if a[2] <= bar:
        return HOLDS
    if a[1] > bar:
        return FAILS
    return OPEN


def claims(conditions: dict[str, dict], stone: str = "stepping-stone x1") -> list[dict]:
    """The claims of the method for one target, from the demo's conditions (each LoRA alone on the
    plain model). Each: {"claim", "verdict", "figures"}."""
    plain, no_plan, half, ss = (conditions.get(k) for k in ("plain model", "no plan x1", "no plan x0.5", stone))
    if not (plain and no_plan and ss):
        return []
    out = []

    def add(claim: str, verdict: str, *figures: tuple[str, tuple]) -> None:
        text = ", ".join(f"{name} {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}]" for name, f in figures)
        out.append({"claim": claim, "verdict": verdict, "figures": text})

    leak = {
        name: _figure(c, "3d_leakage") for name, c in (("plain", plain), ("no plan", no_plan), ("stepping-stone", ss))
    }
    add(
        "stepping-stone 3D leakage below no plan's",
        below(leak["stepping-stone"], leak["no plan"]),
        ("stepping-stone", leak["stepping-stone"]),
        ("no plan", leak["no plan"]),
    )
    add("stepping-stone 3D leakage within 0.1 of the plain model's", at_most(leak["stepping-stone"], leak["plain"][0] + 0.1),
        ("stepping-stone", leak["stepping-stone"]), ("plain", leak["plain"]))  # fmt: skip
    if half and "hair_ciede2000" in ss and "hair_ciede2000" in half:
        add("stepping-stone hair-colour error below no plan x0.5's", below(_figure(ss, "hair_ciede2000"), _figure(half, "hair_ciede2000")),
            ("stepping-stone", _figure(ss, "hair_ciede2000")), ("no plan x0.5", _figure(half, "hair_ciede2000")))  # fmt: skip
    if "hairstyle" in ss:
        add(
            "bare `1girl` draws the target's hairstyle in >= 80 %",
            at_least(_figure(ss, "hairstyle"), 0.8),
            ("stepping-stone", _figure(ss, "hairstyle")),
        )
    for key, what in (("background_obeyed", "background"), ("pose_obeyed", "pose")):
        if key in ss and key in plain:
            bar = 0.8 * plain[key]
            add(f"prompted {what} obeyed at >= 80 % of the plain model's rate ({bar:.3f})", at_least(_figure(ss, key), bar),
                ("stepping-stone", _figure(ss, key)), ("plain", _figure(plain, key)))  # fmt: skip
    return out
