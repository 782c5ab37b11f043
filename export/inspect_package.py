"""`appliance-export inspect PKG`: what a package's manifest says about how it was made: the
recipe, the validation figures, the sensitivity table and which node got which precision."""

from __future__ import annotations

from collections import Counter

from appliance.model_package import Manifest

SKIPPED_KEYS = ("sensitivity", "nodes", "groups", "mixed_precision", "auto")


def describe(manifest: Manifest) -> str:
    q = manifest.quantization
    lines = [f"{manifest.task}, {manifest.architecture}, {manifest.backend} backend, {manifest.precision}",
             "recipe: " + (", ".join(f"{k}={v}" for k, v in q.items() if k not in SKIPPED_KEYS) or "none (fp32)")]
    figures = {k: v for k, v in manifest.validation.items() if not isinstance(v, dict)}
    lines.append("validation: " + (", ".join(f"{k}={_number(v)}" for k, v in figures.items()) or "none recorded"))
    if "auto" in q:
        lines.append(f"precision auto ({q['auto']['goal']}): tried")
        lines += [f"  {row['precision']:6} {row.get('package_bytes', 0) / 1e6:8.1f} MB  "
                  + ("passed" if row["passed"] else "refused: " + "; ".join(row["problems"])) for row in q["auto"]["tried"]]
    if "mixed_precision" in q:
        mixed = q["mixed_precision"]
        unit = "MatMul groups" if "groups" in q else "MatMuls"
        lines.append(f"mixed precision: {mixed['rule']}, {mixed['kept']} {unit} kept at {mixed['kept_precision']}")
        lines += [f"  tried {row['kept']:3} kept: cosine mean {row['cosine_mean']:.5f}, min {row['cosine_min']:.5f}"
                  for row in mixed["tried"]]
    if "groups" in q.get("sensitivity", {}):
        lines += _group_table(q["sensitivity"], q["groups"])
    elif "sensitivity" in q:
        table = q["sensitivity"]
        precision = q.get("nodes", {})
        lines.append(f"sensitivity ({table['measure']}), most sensitive first:")
        lines.append(f"  {'cosine mean':>11} {'cosine min':>10}  {'precision':9} node")
        lines += [f"  {row['cosine_mean']:11.6f} {row['cosine_min']:10.6f}  {precision.get(row['node'], '?'):9} "
                  f"{row['node']}" for row in table["nodes"]]
    elif "nodes" in q:
        counts = Counter(q["nodes"].values())
        lines.append("nodes: " + ", ".join(f"{count} at {p}" for p, count in sorted(counts.items())))
    return "\n".join(lines)


def _group_table(table: dict, precision: dict) -> list[str]:
    """A decoder's table: one row per MatMul group, with the decoder's validation figures."""
    lines = [f"sensitivity ({table['measure']}), most sensitive first:",
             f"  {'cosine mean':>11} {'cosine min':>10} {'top-5':>6} {'KL':>8}  {'precision':9} group"]
    lines += [f"  {row['logits_cosine_mean']:11.6f} {row['logits_cosine_min']:10.6f} {row['top5_overlap']:6.3f} "
              f"{row['kl_mean']:8.5f}  {precision.get(row['group'], '?'):9} {row['group']}" for row in table["groups"]]
    return lines


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
