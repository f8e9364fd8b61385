"""Folding windows into paths and paths into boxes: widths, order, and the max_nodes cut."""

from __future__ import annotations

from antiprof_flamegraph.stacks import FlatTree, LabelTable, flatten, fold_window
from antiprof_flamegraph.testing import known_window

from antiprof_core.testing import synthetic_window


def boxes(tree: FlatTree, table: LabelTable) -> list[tuple[int, str, int]]:
    return [(d, table.labels[label][0], v) for label, v, d in zip(tree.labels, tree.values, tree.depths, strict=True)]


def test_boxes_are_in_preorder_with_inclusive_widths() -> None:
    table = LabelTable()
    folded = fold_window(known_window({("main", "a", "b"): 5, ("main", "a"): 2, ("main", "c"): 3}), table)

    tree = flatten(folded)

    assert sorted(boxes(tree, table)) == sorted(
        [(0, "all", 10), (1, "app", 10), (2, "main", 10), (3, "a", 7), (4, "b", 5), (3, "c", 3)]
    )
    names = [name for _, name, _ in boxes(tree, table)]
    assert names.index("b") == names.index("a") + 1  # a's callee right after it


def test_a_frame_on_two_paths_is_two_boxes_and_recursion_stacks() -> None:
    table = LabelTable()
    folded = fold_window(known_window({("main", "x", "walk", "walk"): 4, ("main", "y", "walk"): 1}), table)

    found = boxes(flatten(folded), table)

    assert (4, "walk", 4) in found and (5, "walk", 4) in found and (4, "walk", 1) in found


def box_paths(tree: FlatTree) -> list[tuple[tuple[int, ...], int]]:
    """(labels from the root, width) per box; fails if a box has no parent just before it in preorder."""
    found: list[tuple[tuple[int, ...], int]] = []
    current: list[int] = []
    for label, value, depth in zip(tree.labels, tree.values, tree.depths, strict=True):
        assert depth <= len(current), "a box without its parent"
        current[depth:] = [label]
        found.append((tuple(current), value))
    return found


def test_the_cut_keeps_the_widest_boxes_and_whole_paths_from_the_root() -> None:
    table = LabelTable()
    folded = fold_window(synthetic_window(processes=30, stacks=3000, depth=12, seed=7), table)
    full = dict(box_paths(flatten(folded)))

    for budget in (50, 500, 5000):
        cut = box_paths(flatten(folded, budget))
        assert len(cut) == budget  # ties at the cut fill the budget
        assert cut[0][1] == sum(folded.values())
        kept = dict(cut)
        assert all(full[path] == value for path, value in cut)  # the same widths as the whole tree
        narrowest = min(kept.values())
        assert all(path in kept for path, value in full.items() if value > narrowest)


def test_labels_no_longer_used_are_forgotten_on_compaction() -> None:
    table = LabelTable()
    fold_window(known_window({("main", "gone"): 1}), table)
    kept = fold_window(known_window({("main", "stays"): 2}), table)

    [renumbered] = table.compact([kept])

    assert "gone" not in {name for name, _, _ in table.labels}
    assert boxes(flatten(renumbered), table) == [(0, "all", 2), (1, "app", 2), (2, "main", 2), (3, "stays", 2)]
