"""Placeholder until the harness lands: which ops each suite has rows for."""

SUITE_OPS = {"nm-pack": ("nm_compress", "nm_decompress"), "cpu-linear": ("nm_pack", "nm_linear")}


def ops_with_rows(suite: str) -> tuple[str, ...]:
    return SUITE_OPS.get(suite, ())
