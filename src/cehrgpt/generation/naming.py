"""Strategy folder names, spelled as the original package spells them (but rounded, not truncated).

``<output_folder>/<name>/generated_sequences`` is where the seed's conversion and
privacy commands look, so these names are part of the interface.
"""

from __future__ import annotations

TOP_P_STRATEGY = "TopPStrategy"
TOP_K_STRATEGY = "TopKStrategy"
TOP_MIX_STRATEGY = "TopMixStrategy"
STRATEGIES = (TOP_P_STRATEGY, TOP_K_STRATEGY, TOP_MIX_STRATEGY)


def _scaled(value: float, scale: int) -> int:
    """``value * scale`` rounded half away from zero: 0.29 -> 2900 where truncation gives 2899."""
    scaled = abs(value) * scale
    return int(scaled + 0.5) * (1 if value >= 0 else -1)


def strategy_folder_name(
    sampling_strategy: str,
    top_p: float = 1.0,
    top_k: int = 100,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    epsilon_cutoff: float = 0.0,
) -> str:
    """The folder name for one set of sampling settings.

    Args:
        sampling_strategy: ``TopPStrategy``, ``TopKStrategy`` or ``TopMixStrategy``.
        top_p: nucleus probability (``top_p9500`` for 0.95).
        top_k: number of tokens kept by top-k.
        temperature: suffix ``_temp_<T*10000>`` when not 1.
        repetition_penalty: suffix ``_repetition_penalty_<r*10000>`` when not 1.
        epsilon_cutoff: suffix ``_epsilon_cutoff_<e*100000>`` when positive.

    Returns:
        e.g. ``top_p10000``, ``top_k100``, ``top_mix_p9500_k50_temp_7000``.

    Raises:
        ValueError: for an unknown strategy.
    """
    if sampling_strategy == TOP_P_STRATEGY:
        name = f"top_p{_scaled(top_p, 10000)}"
    elif sampling_strategy == TOP_K_STRATEGY:
        name = f"top_k{int(top_k)}"
    elif sampling_strategy == TOP_MIX_STRATEGY:
        name = f"top_mix_p{_scaled(top_p, 10000)}_k{int(top_k)}"
    else:
        raise ValueError(
            f"unknown sampling strategy {sampling_strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if _scaled(temperature, 10000) != 10000:
        name += f"_temp_{_scaled(temperature, 10000)}"
    if _scaled(repetition_penalty, 10000) != 10000:
        name += f"_repetition_penalty_{_scaled(repetition_penalty, 10000)}"
    if _scaled(epsilon_cutoff, 100000) > 0:
        name += f"_epsilon_cutoff_{_scaled(epsilon_cutoff, 100000)}"
    return name
