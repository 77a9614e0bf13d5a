"""``report.md`` and ``grid.png`` of an evaluation run.

report.md: per subset (GEdit-Bench: EN, EN intersection, CN, CN intersection; otherwise one), an
overview (rows: task groups, columns: models, the rubric's headline figure) and then one table per
task group (rows: figures, columns: models side by side, the best in bold; each cell the value,
its bootstrap 95% interval and the per-seed values). grid.png: source, instruction and each model's
edit for the first items, first seed.
"""

from __future__ import annotations

from pathlib import Path

from .scoring import HEADLINE, LOWER_IS_BETTER, SHARES
from .suites import ALL

LABELS = {
    "following_accuracy": "following accuracy (IF = 5)",
    "not_edited": "not edited (IF = 0)",
    "dp_when_following": "DP when IF = 5",
    "mean_instruction_following": "mean IF",
    "mean_detail_preserving": "mean DP",
    "mean_generation_quality": "mean GQ",
    "sc": "SC", "pq": "PQ", "o": "O",
    "alignment_accuracy": "alignment accuracy (alignment = 5)", "mean_alignment": "mean alignment",
    "clip_sim_source": "CLIP source image-caption", "clip_sim_target": "CLIP edit-target caption (CLIP-T)",
    "clip_sim_dir": "CLIP direction (CLIPdir)", "clip_sim_image": "CLIP source-edit (CLIP-I)",
    "dinov2_sim": "DINOv2 source-edit (DINO)", "ssim": "SSIM source-edit",
}


def _number(name: str, value) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if name in SHARES else f"{value:.2f}"


def _cell(name: str, figure: dict, bold: bool) -> str:
    text = _number(name, figure["value"])
    if bold:
        text = f"**{text}**"
    if figure.get("ci95"):
        low, high = figure["ci95"]
        text += f" [{_number(name, low)}, {_number(name, high)}]"
    seeds = [v for v in figure.get("per_seed", {}).values()]
    if len(seeds) > 1:
        text += " (" + ", ".join(_number(name, v) for v in seeds) + ")"
    return text


def _best(name: str, values: list) -> set[int]:
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return set()
    target = (min if name in LOWER_IS_BETTER else max)(v for v, _ in present)
    winners = {i for v, i in present if v == target}
    return winners if len(winners) < len(present) else set()


def _group_table(group_name: str, summaries: list[dict | None], names: list[str]) -> list[str]:
    lines = [f"| {group_name} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    figure_names = next(iter(s for s in summaries if s is not None))["figures"].keys()
    for figure in figure_names:
        values = [None if s is None else s["figures"][figure]["value"] for s in summaries]
        best = _best(figure, values)
        cells = ["-" if s is None else _cell(figure, s["figures"][figure], i in best) for i, s in enumerate(summaries)]
        lines.append(f"| {LABELS.get(figure, figure)} | " + " | ".join(cells) + " |")
    lines.append("| judged | " + " | ".join("-" if s is None else f"{s['judged']}/{s['rows']}" for s in summaries) + " |")
    return lines


def render_report(results) -> str:
    names = list(results.models)
    headline = HEADLINE[results.rubric]
    lines = [f"# Evaluation: {results.suite}", "",
             f"Models: {', '.join(names)}. Judge: {results.judge['model']} ({results.rubric}, rubric "
             f"{results.judge['rubric_version']}). Seeds: {', '.join(map(str, results.seeds))}. "
             f"Cells: value [bootstrap 95% interval over items] (per seed); best in bold.", ""]
    if results.skipped:
        lines += [f"Skipped items: {len(results.skipped)} (unreadable source image): "
                  + "; ".join(f"{s['id']}: {s['error']}" for s in results.skipped[:10]), ""]
    subsets = list(next(iter(results.models.values()))["subsets"])
    for subset in subsets:
        groups = []
        for model in names:
            for group in results.models[model]["subsets"][subset]:
                if group not in groups:
                    groups.append(group)
        groups = [g for g in groups if g != ALL] + [ALL]
        if len(subsets) > 1 or subset != ALL:
            lines += [f"## Subset: {subset}", ""]
        lines += [f"{LABELS.get(headline, headline)} per task group:", "",
                  "| task group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for group in groups:
            summaries = [results.models[m]["subsets"][subset].get(group) for m in names]
            values = [None if s is None else s["figures"][headline]["value"] for s in summaries]
            best = _best(headline, values)
            cells = ["-" if s is None else (f"**{_number(headline, v)}**" if i in best else _number(headline, v))
                     for i, (s, v) in enumerate(zip(summaries, values))]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines.append("")
        for group in groups:
            summaries = [results.models[m]["subsets"][subset].get(group) for m in names]
            if all(s is None for s in summaries):
                continue
            lines += [f"### {subset} / {group}" if len(subsets) > 1 else f"### {group}", ""]
            lines += _group_table("figure", summaries, names) + [""]
    lines += ["![grid](grid.png)", ""]
    return "\n".join(lines)


def write_report(results, path: Path) -> None:
    from .harness import _write_atomic

    _write_atomic(path, render_report(results))


def write_grid(path: Path, items, models: list[str], seed: int, out: Path, tile: int = 96,
               with_source: bool = True) -> None:
    """Sources (edit suites), instructions or prompts, and each model's image (seed ``seed``), one
    item a row."""
    from PIL import Image, ImageDraw

    from .harness import _open_rgb, image_path

    text_width, header = 200, 20
    columns = (["source"] if with_source else []) + ["instruction" if with_source else "prompt", *models]
    first = tile if with_source else 0
    width = first + text_width + tile * len(models)
    grid = Image.new("RGB", (width, header + tile * max(1, len(items))), "white")
    draw = ImageDraw.Draw(grid)
    xs = ([0] if with_source else []) + [first] + [first + text_width + k * tile for k in range(len(models))]
    for x, label in zip(xs, columns):
        draw.text((x + 4, 4), label[:16], fill="black")
    for row, item in enumerate(items):
        y = header + row * tile
        if with_source:
            grid.paste(_open_rgb(item.source_image).resize((tile, tile)), (0, y))
        words, wrapped, line = item.instruction.split(), [], ""
        for word in words:
            if line and len(line) + len(word) + 1 > 30:
                wrapped.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        wrapped.append(line)
        for j, text in enumerate(wrapped[:7]):
            draw.text((first + 6, y + 6 + 12 * j), text.encode("ascii", "replace").decode(), fill="black")
        for k, model in enumerate(models):
            made = image_path(out, model, seed, item.id)
            if made.is_file():
                grid.paste(Image.open(made).convert("RGB").resize((tile, tile)), (first + text_width + k * tile, y))
    partial = path.with_name(path.name + ".partial")
    grid.save(partial, format="PNG")
    partial.replace(path)
